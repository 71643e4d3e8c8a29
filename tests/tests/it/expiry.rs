//! Expiry, enforced twice: the server never delivers an expired field; the
//! agent refuses a field that arrives expired.

use std::time::Duration;

use tether_sdk::{Agent, AgentEvent, Client, FieldStatus, Patch, RecordingCapability, WaitLevel, Window};
use tether_tests::{BOUND, Deployment, eventually, on_both};

use crate::command_path::event;

on_both!(the_server_never_delivers_an_expired_field);
async fn the_server_never_delivers_an_expired_field(d: Deployment) {
    let client = Client::connect(d.app_node().url()).await.unwrap();
    let out = client
        .set_desired("car-e", Patch::new().window(Window::FrontLeft, 100))
        .ttl(Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(out.fields[0].status, FieldStatus::Pending);
    eventually("expired", BOUND, || async {
        let v = client.get_vehicle("car-e").await.unwrap();
        (v.fields[0].status == FieldStatus::Expired as i32).then_some(())
    })
    .await;

    let windows = RecordingCapability::new("windows");
    let applied = windows.applied();
    let agent = Agent::builder(d.vehicle_node().url(), "car-e").capability(windows).spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    // A live write proves the session works, and only it is applied.
    let later =
        client.set_desired("car-e", Patch::new().window(Window::RearRight, 5)).wait(WaitLevel::Applied).await.unwrap();
    assert_eq!(later.fields[0].status, FieldStatus::Applied);
    let paths: Vec<String> = applied.lock().unwrap().iter().map(|c| c.path.to_string()).collect();
    assert_eq!(paths, ["windows.rear_right"], "the expired field never reached the vehicle");
    let v = client.get_vehicle("car-e").await.unwrap();
    let f = v.fields.iter().find(|f| f.path == "windows.front_left").unwrap();
    assert_eq!(f.status, FieldStatus::Expired as i32);
    agent.shutdown().await;
}

on_both!(the_agent_refuses_a_field_that_arrives_expired);
async fn the_agent_refuses_a_field_that_arrives_expired(d: Deployment) {
    let client = Client::connect(d.app_node().url()).await.unwrap();
    // The vehicle's clock runs two minutes ahead; allowance 2 s.
    let windows = RecordingCapability::new("windows");
    let applied = windows.applied();
    let agent = Agent::builder(d.vehicle_node().url(), "car-skew")
        .capability(windows)
        .clock_offset(Duration::from_secs(120).as_millis() as i64)
        .skew_allowance(Duration::from_secs(2))
        .spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    let out = client
        .set_desired("car-skew", Patch::new().window(Window::FrontLeft, 50))
        .ttl(Duration::from_secs(60))
        .wait(WaitLevel::Applied)
        .await
        .unwrap();
    let f = &out.fields[0];
    assert_eq!((f.status, f.reason.as_str()), (FieldStatus::Expired, "expired_on_arrival"), "{f:?}");
    assert!(applied.lock().unwrap().is_empty());
    agent.shutdown().await;
}
