//! The command path through the SDK: retry storm, wait levels, deadlines and
//! cancellation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tether_sdk::{Agent, AgentEvent, Client, FieldStatus, Patch, RecordingCapability, WaitLevel, Window};
use tether_tests::{BOUND, Deployment, eventually, on_both};
use tonic::Code;

/// Waits for an agent event matching `f`.
pub(crate) async fn event(
    rx: &mut tokio::sync::broadcast::Receiver<AgentEvent>,
    f: impl Fn(&AgentEvent) -> bool,
) -> AgentEvent {
    tokio::time::timeout(BOUND, async {
        loop {
            match rx.recv().await {
                Ok(e) if f(&e) => return e,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("agent events closed: {e}"),
            }
        }
    })
    .await
    .expect("agent event in time")
}

on_both!(five_taps_while_offline_are_applied_once_from_one_snapshot);
async fn five_taps_while_offline_are_applied_once_from_one_snapshot(d: Deployment) {
    let client = Client::connect(d.app_node().url()).await.unwrap().with_debounce(Duration::ZERO);
    let state_dir = d.dir().join("agent");

    // The vehicle is known, then drops off (a tunnel).
    let agent = Agent::builder(d.vehicle_node().url(), "car-storm").state_dir(state_dir.clone()).spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    agent.shutdown().await;
    eventually("offline", BOUND, || async {
        // On a cluster the app's node learns of the vehicle from the node it
        // connected to, a moment later.
        let v = client.get_vehicle("car-storm").await.ok()?;
        (!v.presence.unwrap().online).then_some(())
    })
    .await;

    // The user taps "open window" five times: five writes, five keys.
    for tap in 0..5 {
        let out = client
            .set_desired("car-storm", Patch::new().window(Window::FrontLeft, 100))
            .idempotency_key(format!("tap-{tap}"))
            .await
            .unwrap();
        assert_eq!(out.generation, 1, "the same target state in flight is not a new command");
    }

    let windows = RecordingCapability::new("windows");
    let applied = windows.applied();
    let agent = Agent::builder(d.vehicle_node().url(), "car-storm")
        .state_dir(state_dir)
        .capability(windows)
        .default_rate_limit(Duration::ZERO)
        .spawn();
    eventually("applied", BOUND, || async {
        let v = client.get_vehicle("car-storm").await.unwrap();
        let f = v.fields.iter().find(|f| f.path == "windows.front_left")?;
        (f.status == FieldStatus::Applied as i32).then_some(())
    })
    .await;
    // One more round trip through the session proves nothing else was queued.
    let out = client.set_desired("car-storm", Patch::new().window(Window::RearLeft, 10)).wait(WaitLevel::Applied).await;
    assert_eq!(out.unwrap().fields[0].status, FieldStatus::Applied);
    let changes = applied.lock().unwrap().clone();
    let front: Vec<_> = changes.iter().filter(|c| &*c.path == "windows.front_left").collect();
    assert_eq!(front.len(), 1, "applied exactly once: {changes:?}");
    // Snapshots are counted by the node holding the session.
    let session_node = Client::connect(d.vehicle_node().url()).await.unwrap();
    let v = session_node.get_vehicle("car-storm").await.unwrap();
    assert_eq!(v.presence.unwrap().snapshots_sent, 2, "one snapshot for the storm, one for the later write");
    agent.shutdown().await;
}

on_both!(wait_levels_resolve_and_refusals_carry_their_reason);
async fn wait_levels_resolve_and_refusals_carry_their_reason(d: Deployment) {
    let client = Client::connect(d.app_node().url()).await.unwrap();
    let parked = Arc::new(AtomicBool::new(false));
    let p = parked.clone();
    let agent = Agent::builder(d.vehicle_node().url(), "car-w")
        .capability(RecordingCapability::new("windows"))
        .capability(RecordingCapability::new("climate"))
        .precondition("climate", "parked", move |_| p.load(Ordering::SeqCst))
        .default_rate_limit(Duration::ZERO)
        .spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;

    let delivered = client
        .set_desired("car-w", Patch::new().window(Window::FrontRight, 30))
        .wait(WaitLevel::Delivered)
        .await
        .unwrap();
    assert!(matches!(delivered.fields[0].status, FieldStatus::Delivered | FieldStatus::Applied), "{delivered:?}");

    let applied = client
        .set_desired("car-w", Patch::new().window(Window::FrontRight, 60))
        .wait(WaitLevel::Applied)
        .await
        .unwrap();
    assert_eq!(applied.fields[0].status, FieldStatus::Applied);

    let refused = client.set_desired("car-w", Patch::new().climate_on(true)).wait(WaitLevel::Applied).await.unwrap();
    let f = &refused.fields[0];
    assert_eq!((f.status, f.reason.as_str()), (FieldStatus::Rejected, "precondition:parked"), "{f:?}");

    parked.store(true, Ordering::SeqCst);
    // A new intent (not a retry): its own key, so the SDK's debounce does not
    // replay the refusal.
    let ok = client
        .set_desired("car-w", Patch::new().climate_on(true))
        .idempotency_key("after-parking")
        .wait(WaitLevel::Applied)
        .await
        .unwrap();
    assert_eq!(ok.fields[0].status, FieldStatus::Applied, "a refused field may be written again");
    agent.shutdown().await;
}

on_both!(a_short_deadline_gives_deadline_exceeded_and_the_state_stays_stored);
async fn a_short_deadline_gives_deadline_exceeded_and_the_state_stays_stored(d: Deployment) {
    let client = Client::connect(d.app_node().url()).await.unwrap();
    let agent = Agent::builder(d.vehicle_node().url(), "car-slow")
        .capability(RecordingCapability::new("windows").with_delay(Duration::from_secs(3)))
        .spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;

    let started = Instant::now();
    let err = client
        .set_desired("car-slow", Patch::new().window(Window::Sunroof, 100))
        .wait(WaitLevel::Applied)
        .timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Some(Code::DeadlineExceeded), "{err:?}");
    assert!(err.to_string().contains("stays stored"), "{err}");
    assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "{took:?}");
    let v = client.get_vehicle("car-slow").await.unwrap();
    let f = v.fields.iter().find(|f| f.path == "windows.sunroof").expect("stored");
    assert_eq!(f.generation, 1);
    // And the vehicle still applies it.
    eventually("applied later", BOUND, || async {
        let v = client.get_vehicle("car-slow").await.unwrap();
        (v.fields[0].status == FieldStatus::Applied as i32).then_some(())
    })
    .await;
    agent.shutdown().await;
}

on_both!(cancelling_a_waiting_call_leaves_no_waiter_behind);
async fn cancelling_a_waiting_call_leaves_no_waiter_behind(d: Deployment) {
    let client = Client::connect(d.app_node().url()).await.unwrap();
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .set_desired("car-away", Patch::new().lock(tether_sdk::LockState::Locked))
                .wait(WaitLevel::Applied)
                .timeout(Duration::from_secs(60))
                .await
        })
    };
    eventually("one waiter", BOUND, || async { (d.app_node().stats().waiters == 1).then_some(()) }).await;
    waiting.abort();
    eventually("no waiter", BOUND, || async { (d.app_node().stats().waiters == 0).then_some(()) }).await;
    let v = client.get_vehicle("car-away").await.unwrap();
    assert_eq!(v.generation, 1, "cancelling the call never cancels the stored desired state");
    assert_eq!(v.fields[0].status, FieldStatus::Pending as i32);
}

on_both!(the_agent_rate_limits_each_capability);
async fn the_agent_rate_limits_each_capability(d: Deployment) {
    let client = Client::connect(d.app_node().url()).await.unwrap();
    // Each capability at most once per 2 s (the default is 500 ms; a longer
    // window keeps the second write inside it on a loaded machine).
    const WINDOW: Duration = Duration::from_secs(2);
    let agent = Agent::builder(d.vehicle_node().url(), "car-rl")
        .capability(RecordingCapability::new("windows"))
        .capability(RecordingCapability::new("doors"))
        .default_rate_limit(WINDOW)
        .spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    let apply = |patch: Patch| client.set_desired("car-rl", patch).wait(WaitLevel::Applied);
    let first = apply(Patch::new().window(Window::FrontLeft, 10)).await.unwrap();
    let started = Instant::now();
    assert_eq!(first.fields[0].status, FieldStatus::Applied);
    let second = apply(Patch::new().window(Window::FrontLeft, 20)).await.unwrap();
    assert!(started.elapsed() < WINDOW, "the second write came within the window");
    let f = &second.fields[0];
    assert_eq!((f.status, f.reason.as_str()), (FieldStatus::Rejected, "rate_limited"), "{f:?}");
    // Another capability is not limited by this one.
    let doors = apply(Patch::new().lock(tether_sdk::LockState::Locked)).await.unwrap();
    assert_eq!(doors.fields[0].status, FieldStatus::Applied);
    // Once the window has passed, the motor may move again.
    tokio::time::sleep(WINDOW.saturating_sub(started.elapsed())).await;
    let third = apply(Patch::new().window(Window::FrontLeft, 20)).await.unwrap();
    assert_eq!(third.fields[0].status, FieldStatus::Applied);
    agent.shutdown().await;
}
