//! Nothing accepted is lost: `kill -9` and graceful restarts.

use std::path::PathBuf;

use tether_sdk::{
    Agent, AgentEvent, Client, FieldStatus, GoodbyeReason, Patch, RecordingCapability, WaitLevel, Window,
};
use tether_tests::{BOUND, ChildServer, TestServer, eventually};

use crate::command_path::event;

fn tetherd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"))
}

#[tokio::test]
async fn kill_9_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ChildServer::start(&tetherd(), &data).await;
    let client = Client::connect(server.url()).await.unwrap();
    for i in 0..20u32 {
        client
            .set_desired(format!("car-{i}"), Patch::new().window(Window::FrontLeft, i * 5).charge_limit(80))
            .no_expiry()
            .await
            .unwrap();
    }
    server.kill_9().await;

    let server = ChildServer::start(&tetherd(), &data).await;
    let client = Client::connect(server.url()).await.unwrap();
    for i in 0..20u32 {
        let v = client.get_vehicle(format!("car-{i}")).await.unwrap();
        assert_eq!(v.generation, 1, "car-{i}");
        assert_eq!(v.fields.len(), 2, "car-{i}");
    }
    let windows = RecordingCapability::new("windows");
    let applied = windows.applied();
    let agent = Agent::builder(server.url(), "car-7")
        .capability(windows)
        .capability(RecordingCapability::new("charging"))
        .spawn();
    eventually("the reconnecting vehicle applies the stored state", BOUND, || async {
        let v = client.get_vehicle("car-7").await.unwrap();
        v.fields.iter().all(|f| f.status == FieldStatus::Applied as i32).then_some(())
    })
    .await;
    let got: Vec<_> = applied.lock().unwrap().iter().map(|c| (c.path.to_string(), c.value.clone())).collect();
    assert_eq!(got, [("windows.front_left".to_string(), prost_reflect::Value::U32(35))]);
    agent.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_says_goodbye_and_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    let client = Client::connect(server.url()).await.unwrap();
    let agent = Agent::builder(server.url(), "car-g").capability(RecordingCapability::new("windows")).spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    client.set_desired("car-g", Patch::new().window(Window::FrontLeft, 10)).wait(WaitLevel::Applied).await.unwrap();
    client.set_desired("car-off", Patch::new().window(Window::FrontLeft, 20)).no_expiry().await.unwrap();

    server.shutdown().await;
    let bye = event(&mut events, |e| matches!(e, AgentEvent::Goodbye { .. })).await;
    let AgentEvent::Goodbye { reason, .. } = bye else { unreachable!() };
    assert_eq!(reason, GoodbyeReason::ShuttingDown);
    agent.shutdown().await;

    let server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    let client = Client::connect(server.url()).await.unwrap();
    let v = client.get_vehicle("car-off").await.unwrap();
    assert_eq!(v.generation, 1);
    let v = client.get_vehicle("car-g").await.unwrap();
    assert_eq!(v.fields[0].status, FieldStatus::Applied as i32);
}

#[tokio::test]
async fn the_sdk_retries_unavailable_with_the_same_key_across_a_restart() {
    use std::time::Duration;
    use tether_sdk::RetryPolicy;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    let addr = first.addr;
    let client = Client::connect(first.url())
        .await
        .unwrap()
        .with_retry(RetryPolicy { max_attempts: 30, ..RetryPolicy::default() });
    let write = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .set_desired("car-retry", Patch::new().window(Window::FrontLeft, 100))
                .wait(WaitLevel::Applied)
                .timeout(Duration::from_secs(30))
                .await
        })
    };
    eventually("the write waits", BOUND, || async { (first.stats().waiters == 1).then_some(()) }).await;
    // The node restarts under the waiting call: it answers UNAVAILABLE and
    // the SDK retries against the new process.
    first.shutdown().await;
    let second = TestServer::start_with(|c| {
        c.data_dir = data.clone();
        c.listen = addr;
    })
    .await;
    let agent = Agent::builder(second.url(), "car-retry").capability(RecordingCapability::new("windows")).spawn();
    let outcome = write.await.unwrap().expect("the retried write succeeds");
    assert!(outcome.replayed, "the retry carried the first attempt's key");
    assert_eq!(outcome.generation, 1, "and so changed nothing: {outcome:?}");
    assert_eq!(outcome.fields[0].status, FieldStatus::Applied);
    agent.shutdown().await;
}
