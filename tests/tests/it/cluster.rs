//! The cluster on NATS JetStream (issue 16), against real nats-server
//! processes. First, the JetStream behaviour the cluster's store is built
//! on, checked on a real 3-node cluster with `sync_interval: always`: a
//! write, its idempotency key and its audit record as one atomic batch
//! guarded by compare-and-set on the record's subject; a stale batch
//! rejected whole; a retried message id answered as a duplicate; and no
//! acknowledged write lost when the stream's leader is killed.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use tether_proto::app::v1::GetVehicleRequest;
use tether_proto::app::v1::control_service_client::ControlServiceClient;
use tether_proto::vehicle::v1::{GoodbyeReason, server_message};
use tether_sdk::{Agent, AgentEvent, Client, FieldStatus, Patch, RecordingCapability, WaitLevel, Window};
use tether_tests::nats::NatsCluster;
use tether_tests::{BOUND, ChildServer, Deployment, RawVehicle, eventually, server_stats};

/// The stream the checks use, replicated on all three nodes.
async fn stream(js: &jetstream::Context) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "TETHER_CHECK".into(),
        subjects: vec!["check.>".into()],
        num_replicas: 3,
        allow_atomic_publish: true,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("an R3 stream with atomic publish")
}

/// Publishes `messages` as one atomic batch; the first carries
/// `expected_last` for its subject (compare-and-set). Returns the commit's
/// stream sequence, or the server's refusal.
async fn batch(
    client: &async_nats::Client,
    id: &str,
    expected_last: u64,
    messages: &[(&str, &str)],
) -> Result<u64, String> {
    let count = messages.len();
    for (n, (subject, body)) in messages.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", id);
        headers.insert("Nats-Batch-Sequence", (n + 1).to_string().as_str());
        if n == 0 {
            headers.insert("Nats-Expected-Last-Subject-Sequence", expected_last.to_string().as_str());
        }
        let last = n + 1 == count;
        if last {
            headers.insert("Nats-Batch-Commit", "1");
        }
        let payload = body.as_bytes().to_vec().into();
        // The first message and the commit are requests (an empty reply or an
        // error; the commit's reply is the publish ack); the ones between need
        // no reply.
        if n == 0 || last {
            let reply =
                client.request_with_headers(subject.to_string(), headers, payload).await.map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&reply.payload).to_string();
            if text.contains("\"error\"") {
                return Err(text);
            }
            if last {
                let ack: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                return ack["seq"].as_u64().ok_or(text);
            }
        } else {
            client.publish_with_headers(subject.to_string(), headers, payload).await.map_err(|e| e.to_string())?;
        }
    }
    unreachable!("the last message returned")
}

/// The last message on `subject`, or `None`.
async fn last(stream: &stream::Stream, subject: &str) -> Option<(u64, String)> {
    let message = stream.get_last_raw_message_by_subject(subject).await.ok()?;
    Some((message.sequence, String::from_utf8_lossy(&message.payload).to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_jetstream_keeps_atomic_compare_and_set_batches_through_a_leader_kill() {
    let mut nats = NatsCluster::start(3).await;
    let servers: Vec<async_nats::ServerAddr> = nats.urls().split(',').map(|u| u.parse().unwrap()).collect();
    let client = async_nats::connect(servers).await.expect("connects");
    let js = jetstream::new(client.clone());
    let mut check = stream(&js).await;
    // A new R3 stream answers once its replicas elected a leader.
    eventually("the new stream has a leader", BOUND, || async {
        js.get_stream("TETHER_CHECK").await.ok()?.info().await.ok()?.cluster.as_ref()?.leader.clone()
    })
    .await;

    // A write: record, key and audit record together, the record's subject
    // empty so far (expected last sequence 0).
    let write = [("check.rec.car-1", "gen 1"), ("check.key.car-1.k1", "gen 1"), ("check.audit.car-1", "k1 accepted")];
    let first = batch(&client, "b1", 0, &write).await.expect("the first write commits");
    let (rec_seq, body) = last(&check, "check.rec.car-1").await.expect("the record is stored");
    assert_eq!(body, "gen 1");
    assert!(first >= rec_seq + 2, "the batch's messages are consecutive, the commit last");

    // A second writer that read the record before the first wrote it: its
    // compare-and-set is stale, and nothing of its batch is stored.
    let stale = [("check.rec.car-1", "gen 1 (other)"), ("check.key.car-1.k2", "x"), ("check.audit.car-1", "k2")];
    let refused = batch(&client, "b2", 0, &stale).await.expect_err("a stale batch is refused");
    assert!(refused.contains("wrong last sequence") || refused.contains("10071"), "{refused}");
    assert_eq!(last(&check, "check.rec.car-1").await.map(|(_, b)| b).as_deref(), Some("gen 1"));
    assert!(last(&check, "check.key.car-1.k2").await.is_none(), "no part of the refused batch is stored");
    assert_eq!(last(&check, "check.audit.car-1").await.map(|(_, b)| b).as_deref(), Some("k1 accepted"));

    // The same write retried with the right revision commits.
    let next = [("check.rec.car-1", "gen 2"), ("check.key.car-1.k2", "gen 2"), ("check.audit.car-1", "k2 accepted")];
    batch(&client, "b3", rec_seq, &next).await.expect("the retried write commits");

    // A message id seen before is answered as a duplicate, not stored again.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "presence-claim-1");
    let once = js.publish_with_headers("check.pres.car-1", headers.clone(), "node a".into()).await.unwrap();
    let once = once.await.unwrap();
    let again = js.publish_with_headers("check.pres.car-1", headers, "node a".into()).await.unwrap().await.unwrap();
    assert!(!once.duplicate && again.duplicate && again.sequence == once.sequence);

    // Kill the stream's leader: writes stall for the election, then go on;
    // nothing acknowledged is lost.
    let leader = check.info().await.unwrap().cluster.as_ref().and_then(|c| c.leader.clone()).expect("a leader");
    let victim = (0..3).find(|&i| nats.name(i) == leader).expect("the leader is a node");
    let acked_before = check.info().await.unwrap().state.messages;
    nats.kill(victim).await;
    let started = std::time::Instant::now();
    let (rec_seq, _) = loop {
        // During the election a publish fails at once: retried with backoff,
        // within a bound.
        assert!(started.elapsed() < Duration::from_secs(30), "no new leader within 30 s");
        if let Some(found) = last(&check, "check.rec.car-1").await {
            let write = [("check.rec.car-1", "gen 3"), ("check.audit.car-1", "k3 accepted")];
            match batch(&client, "b4", found.0, &write).await {
                Ok(_) => break found,
                Err(e) => eprintln!("during the election: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("writes resumed {:?} after the leader was killed", started.elapsed());
    assert!(rec_seq > 0);
    let info = check.info().await.unwrap();
    assert_eq!(info.state.messages, acked_before + 2, "every acknowledged message kept, the new batch added");
    assert_eq!(last(&check, "check.rec.car-1").await.map(|(_, b)| b).as_deref(), Some("gen 3"));

    // The killed node comes back and catches up.
    nats.restart(victim).await;
    tokio::time::timeout(BOUND * 3, async {
        loop {
            check = js.get_stream("TETHER_CHECK").await.unwrap();
            let replicas = check.info().await.unwrap().cluster.clone().map(|c| c.replicas).unwrap_or_default();
            if replicas.len() == 2 && replicas.iter().all(|r| r.current) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the restarted node is current again");
}

/// Failure behaviour 1: the vehicle holds its session on one node, the app
/// writes through a second and waits for APPLIED, a watcher on the third
/// sees the write and its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_write_on_one_node_is_applied_by_a_vehicle_on_another_and_watched_on_a_third() {
    let d = Deployment::cluster().await;
    let windows = RecordingCapability::new("windows");
    let applied = windows.applied();
    let agent =
        Agent::builder(d.vehicle_node().url(), "car-x").capability(windows).default_rate_limit(Duration::ZERO).spawn();
    let mut events = agent.events();
    crate::command_path::event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;

    let watcher = Client::connect(d.watch_node().url()).await.unwrap();
    let app = Client::connect(d.app_node().url()).await.unwrap().with_debounce(Duration::ZERO);
    // The watch opens once the vehicle is known on the watcher's node.
    let vehicle =
        eventually("the vehicle is known on every node", BOUND, || async { watcher.get_vehicle("car-x").await.ok() })
            .await;
    let mut watch = watcher.watch("car-x", vehicle.generation).await.unwrap();

    let out = app.set_desired("car-x", Patch::new().window(Window::FrontLeft, 40)).wait(WaitLevel::Applied).await;
    let out = out.expect("APPLIED across nodes");
    assert_eq!(out.fields[0].status, FieldStatus::Applied);
    assert_eq!(applied.lock().unwrap().len(), 1, "applied once");

    let seen = tokio::time::timeout(BOUND, async {
        loop {
            let event = watch.next().await.expect("the watch goes on").expect("no error");
            let v = event.vehicle.expect("a vehicle");
            let applied_here =
                v.fields.iter().any(|f| f.path == "windows.front_left" && f.status == FieldStatus::Applied as i32);
            if v.generation >= out.generation && applied_here {
                return v.generation;
            }
        }
    })
    .await
    .expect("the watcher on the third node sees the write applied");
    assert_eq!(seen, out.generation);

    // Each node's cluster figures.
    let metric = |text: &str, name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '));
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let on_a = crate::metrics::scrape(d.vehicle_node().admin_addr()).await;
    assert!(metric(&on_a, "tether_cluster_presence_claims_total") >= 1, "{on_a}");
    assert_eq!(metric(&on_a, "tether_cluster_isolated"), 0);
    let on_b = crate::metrics::scrape(d.app_node().admin_addr()).await;
    assert!(metric(&on_b, "tether_cluster_publish_seconds_count") >= 1, "{on_b}");
    eventually("each node sees the two others' leases", BOUND, || async {
        let text = crate::metrics::scrape(d.watch_node().admin_addr()).await;
        (metric(&text, "tether_cluster_nodes_live") == 2).then_some(())
    })
    .await;
    // And through the admin API, as `tether stats` shows them.
    let stats = server_stats(d.vehicle_node().channel().await).await;
    let cluster = stats.cluster.expect("a cluster node's figures");
    assert!(cluster.presence_claims >= 1 && !cluster.isolated, "{cluster:?}");
    let out = crate::cli::tether(d.app_node(), &["stats"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("cluster.saves_published"), "{text}");
    agent.shutdown().await;
}

/// Failure behaviour 4: a vehicle that reconnects to another node supersedes
/// its session on the first (Goodbye SUPERSEDED there), presence on a third
/// node follows the newer session, and the old session's end never flips it
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_reconnect_to_another_node_supersedes_the_session_on_the_first() {
    let d = Deployment::cluster_with(|c| c.heartbeat_interval = Duration::from_secs(30)).await;
    let [a, b, c] = d.nodes() else { panic!("three nodes") };
    let (mut first, w1) = RawVehicle::connect(a.channel().await, "car-hop", 0).await;
    let mut app = ControlServiceClient::new(c.channel().await);
    let presence = |app: ControlServiceClient<tonic::transport::Channel>| async move {
        let v = app.clone().get_vehicle(GetVehicleRequest { vehicle_id: "car-hop".into() }).await.ok()?;
        v.into_inner().presence
    };
    eventually("online on the third node", BOUND, || async {
        presence(app.clone()).await.filter(|p| p.online && p.session_id == w1.session_id)
    })
    .await;

    let (mut second, w2) = RawVehicle::connect(b.channel().await, "car-hop", 0).await;
    match tokio::time::timeout(BOUND, first.next_non_heartbeat()).await.expect("a goodbye in time") {
        Some(server_message::Kind::Goodbye(g)) => {
            assert_eq!(g.reason, GoodbyeReason::Superseded as i32);
            assert!(g.message.contains("superseded"), "{}", g.message);
        }
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert!(first.next_non_heartbeat().await.is_none(), "the old stream is closed");
    drop(first);
    eventually("the newer session is the vehicle's presence", BOUND, || async {
        presence(app.clone()).await.filter(|p| p.online && p.session_id == w2.session_id)
    })
    .await;
    // The old session's end (on node A) never flips presence back: the newer
    // session lives on, and every node says so.
    second.heartbeat(1).await;
    assert!(matches!(second.next().await, Some(server_message::Kind::Heartbeat(_))));
    for node in d.nodes() {
        let view = ControlServiceClient::new(node.channel().await);
        let p = eventually("every node agrees", BOUND, || async {
            presence(view.clone()).await.filter(|p| p.session_id == w2.session_id)
        })
        .await;
        assert!(p.online);
    }
    assert_eq!(a.stats().sessions, 0);
    assert_eq!(b.stats().sessions, 1);
    assert_eq!(a.stats().sessions_superseded, 1);
    // Its end on B is seen on C.
    drop(second);
    eventually("offline once the newer session ends", BOUND, || async {
        presence(app.clone()).await.filter(|p| !p.online)
    })
    .await;
    app.get_vehicle(GetVehicleRequest { vehicle_id: "car-hop".into() }).await.expect("still known");
}

/// Failure behaviour 6: writers on two nodes write to one vehicle at once.
/// Every accepted write has a generation of its own, each writer sees its
/// generations rise, and every node ends on the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_concurrent_writers_on_two_nodes_get_distinct_ordered_generations() {
    const WRITES: u32 = 40;
    let d = Deployment::cluster().await;
    let writer = |node: usize, base: u32| {
        let url = d.nodes()[node].url();
        async move {
            let client = Client::connect(url).await.unwrap().with_debounce(Duration::ZERO);
            let mut generations = Vec::new();
            for n in 0..WRITES {
                // Each value differs from every other writer's: each write is a change.
                let out = client
                    .set_desired("car-race", Patch::new().window(Window::FrontLeft, base + n))
                    .idempotency_key(format!("w{node}-{n}"))
                    .await
                    .expect("accepted");
                assert!(!out.replayed);
                generations.push(out.generation);
            }
            generations
        }
    };
    let (on_b, on_c) = tokio::join!(writer(1, 0), writer(2, 50));
    for g in [&on_b, &on_c] {
        assert!(g.windows(2).all(|w| w[0] < w[1]), "a writer's generations rise: {g:?}");
    }
    let mut all: Vec<u64> = on_b.iter().chain(&on_c).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 2 * WRITES as usize, "every accepted write has its own generation");
    let last = *all.last().unwrap();
    assert_eq!(last, u64::from(2 * WRITES), "no generation skipped: {all:?}");
    for node in d.nodes() {
        let client = Client::connect(node.url()).await.unwrap();
        eventually("every node ends on the last write", BOUND, || async {
            let v = client.get_vehicle("car-race").await.ok()?;
            (v.generation == last).then_some(())
        })
        .await;
    }
    let retried: u64 = d.nodes().iter().map(|n| n.conflicts_retried()).sum();
    eprintln!("{retried} calls applied again after a conflict");
}

/// An app's retry of a write through another node (its first node went
/// away) replays the first answer: the key is in the stream, not in a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_retry_with_the_same_key_on_another_node_replays_the_first_answer() {
    let d = Deployment::cluster().await;
    let [_, b, c] = d.nodes() else { panic!("three nodes") };
    let on_b = Client::connect(b.url()).await.unwrap().with_debounce(Duration::ZERO);
    let on_c = Client::connect(c.url()).await.unwrap().with_debounce(Duration::ZERO);
    let first = on_b
        .set_desired("car-retry", Patch::new().window(Window::RearLeft, 25))
        .idempotency_key("tap-1")
        .await
        .expect("accepted on B");
    // A retry arrives on C as soon as B answered: C may not have followed
    // the stream that far yet, and must still replay, not write again.
    let again = on_c
        .set_desired("car-retry", Patch::new().window(Window::RearLeft, 25))
        .idempotency_key("tap-1")
        .await
        .expect("replayed on C");
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.generation, first.generation);
    // The same key with another patch is refused on any node.
    let other = on_c
        .set_desired("car-retry", Patch::new().window(Window::RearLeft, 75))
        .idempotency_key("tap-1")
        .await
        .expect_err("another patch under the same key");
    assert_eq!(other.code(), Some(tonic::Code::AlreadyExists), "{other:?}");
    let v = on_b.get_vehicle("car-retry").await.unwrap();
    assert_eq!(v.generation, first.generation, "written once");
}

/// Failure behaviour 2: three tetherd processes on one stream; 1,000 vehicles
/// (SDK agents given all three addresses) hold their sessions on node A while
/// an app writes to them through node B. A is killed with SIGKILL in the
/// middle of the writes: every vehicle reconnects to a surviving node, the
/// state each applied last is the last write the app was told was accepted,
/// and no vehicle ever has two live sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_kill_9_of_the_node_holding_a_thousand_vehicles_moves_them_and_loses_no_accepted_write() {
    const VEHICLES: usize = 1000;
    const MOVE_BOUND: Duration = Duration::from_secs(90);
    let urls = tether_tests::nats::shared();
    let stream = format!("KILL{}", std::process::id());
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_tetherd-under-test"));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let name = format!("node-{i}");
        let args =
            ["--cluster-nats", urls, "--cluster-stream", &stream, "--cluster-node", &name, "--cluster-lease", "3s"];
        nodes.push(ChildServer::start_with_args(binary, dir.path(), None, &args).await);
    }
    let sessions = |url: String| async move { server_stats(tether_tests::channel(&url).await).await.sessions };
    let (a_url, b_url, c_url) = (nodes[0].url(), nodes[1].url(), nodes[2].url());

    let mut agents = Vec::new();
    let mut applied = Vec::new();
    for n in 0..VEHICLES {
        let windows = RecordingCapability::new("windows");
        applied.push(windows.applied());
        let agent = Agent::builder(a_url.clone(), format!("car-{n:04}"))
            .endpoints([b_url.clone(), c_url.clone()])
            .capability(windows)
            .default_rate_limit(Duration::ZERO)
            .backoff(Duration::from_millis(50), Duration::from_millis(500))
            .spawn();
        agents.push(agent);
    }
    eventually("every vehicle holds its session on A", MOVE_BOUND, || async {
        (sessions(a_url.clone()).await == VEHICLES as u64).then_some(())
    })
    .await;

    // The app writes round after round through B; for each vehicle it keeps
    // the generation of the last write it was told was accepted.
    let app = Client::connect(b_url.clone()).await.unwrap().with_debounce(Duration::ZERO);
    let accepted = Arc::new(Mutex::new(vec![0u64; VEHICLES]));
    let rounds_done = Arc::new(AtomicU32::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (accepted, rounds_done, stop) = (accepted.clone(), rounds_done.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let writes = (0..VEHICLES).map(|n| {
                    let app = app.clone();
                    async move {
                        let patch = Patch::new().window(Window::FrontLeft, round % 100);
                        (n, app.set_desired(format!("car-{n:04}"), patch).await)
                    }
                });
                let mut writes = futures::stream::iter(writes).buffer_unordered(64);
                while let Some((n, out)) = writes.next().await {
                    // UNAVAILABLE or a deadline is not an acceptance: never counted.
                    if let Ok(out) = out {
                        let mut accepted = accepted.lock().unwrap();
                        accepted[n] = accepted[n].max(out.generation);
                    }
                }
                rounds_done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    eventually("a first round of writes", MOVE_BOUND, || async {
        (rounds_done.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    nodes.remove(0).kill_9().await;
    let killed_at = std::time::Instant::now();

    eventually("every vehicle reconnected to a surviving node", MOVE_BOUND, || async {
        let moved = sessions(b_url.clone()).await + sessions(c_url.clone()).await;
        assert!(moved <= VEHICLES as u64, "never two live sessions for one vehicle: {moved}");
        (moved == VEHICLES as u64).then_some(())
    })
    .await;
    let moved_after = killed_at.elapsed();
    // Two more rounds once every vehicle moved, then the writes stop.
    let after = rounds_done.load(Ordering::Relaxed);
    eventually("two more rounds of writes", MOVE_BOUND, || async {
        (rounds_done.load(Ordering::Relaxed) >= after + 2).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let accepted = accepted.lock().unwrap().clone();
    eventually("each vehicle applied the last accepted write", MOVE_BOUND, || async {
        let behind = (0..VEHICLES)
            .filter(|&n| applied[n].lock().unwrap().last().map(|c| c.generation) != Some(accepted[n]))
            .count();
        (behind == 0).then_some(())
    })
    .await;
    let moved = sessions(b_url.clone()).await + sessions(c_url.clone()).await;
    assert_eq!(moved, VEHICLES as u64, "one live session per vehicle");
    eprintln!("{VEHICLES} vehicles online on the surviving nodes {moved_after:?} after the kill");
    for agent in agents {
        agent.shutdown().await;
    }
}

/// Failure behaviour 5: a tetherd whose only nats-server dies (the servers do
/// not advertise each other, so it cannot reach another) cannot renew its
/// lease: it turns NOT_SERVING, ends its sessions and refuses new ones, and
/// its vehicles move to the other nodes, where writes reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_node_that_loses_its_nats_server_goes_not_serving_and_its_vehicles_move() {
    const VEHICLES: usize = 20;
    let mut nats = NatsCluster::start_without_discovery(3).await;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_tetherd-under-test"));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (name, url) = (format!("node-{i}"), nats.url(i));
        let args = ["--cluster-nats", &url, "--cluster-node", &name, "--cluster-lease", "3s"];
        nodes.push(ChildServer::start_with_args(binary, dir.path(), None, &args).await);
    }
    let sessions = |url: String| async move { server_stats(tether_tests::channel(&url).await).await.sessions };
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let agents: Vec<_> = (0..VEHICLES)
        .map(|n| {
            Agent::builder(a.url(), format!("car-{n:02}"))
                .endpoints([b.url(), c.url()])
                .capability(RecordingCapability::new("windows"))
                .default_rate_limit(Duration::ZERO)
                .backoff(Duration::from_millis(50), Duration::from_millis(500))
                .spawn()
        })
        .collect();
    eventually("every vehicle on A", BOUND, || async { (sessions(a.url()).await == VEHICLES as u64).then_some(()) })
        .await;
    assert_eq!(crate::storage::health(a, "").await, tonic_health::ServingStatus::Serving as i32);

    nats.kill(0).await;
    eventually("A turns NOT_SERVING", BOUND, || async {
        (crate::storage::health(a, "").await == tonic_health::ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    eventually("every vehicle moved off A", BOUND * 3, || async {
        let moved = sessions(b.url()).await + sessions(c.url()).await;
        assert!(moved <= VEHICLES as u64, "never two live sessions for one vehicle");
        (moved == VEHICLES as u64 && sessions(a.url()).await == 0).then_some(())
    })
    .await;
    // A refuses sessions while it is cut off.
    let refused = RawVehicle::refusal(tether_tests::channel(&a.url()).await, "car-late").await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("lost its link to the cluster"), "{refused:?}");
    // Writes through C reach a vehicle that moved.
    let app = Client::connect(c.url()).await.unwrap();
    let out = app.set_desired("car-07", Patch::new().window(Window::FrontLeft, 70)).wait(WaitLevel::Applied).await;
    assert_eq!(out.expect("applied after the move").fields[0].status, FieldStatus::Applied);
    for agent in agents {
        agent.shutdown().await;
    }
}

/// Failure behaviour 3: the stream's leader is killed with SIGKILL while
/// apps write through three nodes. Writes stall for the election; a call
/// either is accepted or fails UNAVAILABLE or DEADLINE_EXCEEDED (never an
/// answer that is not true); no accepted write is lost, and a retry with the
/// same key of any call, answered or not, replays or completes it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_kill_9_of_the_stream_leader_under_writes_loses_no_accepted_write() {
    const WRITERS: usize = 6;
    let mut nats = NatsCluster::start(3).await;
    let d = Deployment::cluster_at(&nats.urls(), |_| {}).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    // Each writer: its own vehicle, keys w<writer>-<n>, values cycling.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let url = d.nodes()[w % 3].url();
            let (stop, acks) = (stop.clone(), acks.clone());
            tokio::spawn(async move {
                let client = Client::connect(url).await.unwrap().with_debounce(Duration::ZERO);
                let (mut accepted, mut failed) = (Vec::new(), Vec::new());
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{n}");
                    let out = client
                        .set_desired(format!("car-l{w}"), Patch::new().window(Window::FrontLeft, n % 100))
                        .idempotency_key(key.clone())
                        .timeout(Duration::from_secs(3))
                        .await;
                    match out {
                        Ok(out) => {
                            acks.fetch_add(1, Ordering::Relaxed);
                            accepted.push((key, n, out.generation));
                        }
                        Err(e) => {
                            let code = e.code();
                            assert!(
                                matches!(code, Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)),
                                "a failed write says it may not have happened: {e:?}"
                            );
                            failed.push((key, n));
                        }
                    }
                    n += 1;
                }
                (w, accepted, failed)
            })
        })
        .collect();

    // Some writes first, then the leader dies.
    let js = jetstream::new(
        async_nats::connect(
            nats.urls().split(',').map(|u| u.parse().unwrap()).collect::<Vec<async_nats::ServerAddr>>(),
        )
        .await
        .unwrap(),
    );
    let stream_name = eventually("the stream exists", BOUND, || async {
        let mut names = js.stream_names();
        names.next().await.and_then(Result::ok)
    })
    .await;
    eventually("writes under way", BOUND, || async { (acks.load(Ordering::Relaxed) > 60).then_some(()) }).await;
    let leader = eventually("the stream has a leader", BOUND, || async {
        let mut stream = js.get_stream(&stream_name).await.ok()?;
        stream.info().await.ok()?.cluster.as_ref()?.leader.clone()
    })
    .await;
    let victim = (0..3).find(|&i| nats.name(i) == leader).expect("the leader is a node");
    nats.kill(victim).await;
    let killed = std::time::Instant::now();
    // Writes go on after the election.
    let before = acks.load(Ordering::Relaxed);
    eventually("writes resume after the election", Duration::from_secs(60), || async {
        (acks.load(Ordering::Relaxed) > before + 20).then_some(())
    })
    .await;
    eprintln!("writes resumed within {:?} of the leader's kill", killed.elapsed());
    stop.store(true, Ordering::Relaxed);

    let mut answers = Vec::new();
    for writer in writers {
        answers.push(writer.await.unwrap());
    }
    // Every node follows the stream past the election to the same state.
    for w in 0..WRITERS {
        let vehicle = format!("car-l{w}");
        let mut views = Vec::new();
        for node in d.nodes() {
            views.push(Client::connect(node.url()).await.unwrap());
        }
        eventually("every node converges on the vehicle", BOUND * 2, || async {
            let mut seen = Vec::new();
            for view in &views {
                seen.push(view.get_vehicle(vehicle.clone()).await.ok()?.generation);
            }
            seen.windows(2).all(|w| w[0] == w[1]).then_some(())
        })
        .await;
    }
    // Every call retried with its key, on another node: an accepted one
    // replays its generation (it was not lost); one that failed completes now
    // (replayed if it had committed after all, else accepted once).
    let (mut accepted_total, mut failed_total) = (0, 0);
    for (w, accepted, failed) in answers {
        let client = Client::connect(d.nodes()[(w + 1) % 3].url()).await.unwrap().with_debounce(Duration::ZERO);
        let vehicle = format!("car-l{w}");
        let retries = accepted.iter().map(|(key, n, generation)| {
            let (client, vehicle) = (client.clone(), vehicle.clone());
            async move {
                let again = client
                    .set_desired(vehicle, Patch::new().window(Window::FrontLeft, n % 100))
                    .idempotency_key(key.clone())
                    .await
                    .expect("a retry of an accepted write");
                assert!(
                    again.replayed && again.generation == *generation,
                    "accepted write {key} (generation {generation}) lost: {again:?}"
                );
            }
        });
        futures::stream::iter(retries).buffer_unordered(32).collect::<Vec<()>>().await;
        for (key, n) in &failed {
            client
                .set_desired(vehicle.clone(), Patch::new().window(Window::FrontLeft, n % 100))
                .idempotency_key(key.clone())
                .await
                .expect("a retry of a failed write completes");
        }
        accepted_total += accepted.len();
        failed_total += failed.len();
    }
    eprintln!("{accepted_total} writes accepted and kept, {failed_total} answered UNAVAILABLE or DEADLINE_EXCEEDED");
    assert!(accepted_total > 0);
}

/// Failure behaviour 7: the stream the nodes follow is flooded (70,000
/// messages, more than a NATS client buffers, on the subjects they follow, published as fast as NATS takes
/// them) while an app writes through one node: every node still converges on
/// what is stored, and a watcher on another node sees the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_flooded_feed_still_converges_on_the_stored_state() {
    const FLOOD: usize = 70_000;
    // A cluster of its own: the flood would slow every other test's stream.
    let nats = NatsCluster::start(3).await;
    let d = Deployment::cluster_at(&nats.urls(), |_| {}).await;
    let [_, b, c] = d.nodes() else { panic!("three nodes") };
    let app = Client::connect(b.url()).await.unwrap().with_debounce(Duration::ZERO);
    app.set_desired("car-flood", Patch::new().window(Window::FrontLeft, 1)).await.unwrap();
    let watcher = Client::connect(c.url()).await.unwrap();
    eventually("the vehicle is known on C", BOUND, || async { watcher.get_vehicle("car-flood").await.ok() }).await;
    let mut watch = watcher.watch("car-flood", 0).await.unwrap();

    // The flood: leases of nodes that do not exist, on the stream's subjects
    // that every node follows (each one a message its feed must read).
    let stream = d.stream_name();
    let servers: Vec<async_nats::ServerAddr> = nats.urls().split(',').map(|u| u.parse().unwrap()).collect();
    let js = jetstream::new(async_nats::connect(servers).await.unwrap());
    let prefix = stream.to_ascii_lowercase();
    let flood = tokio::spawn(async move {
        let publishes = (0..FLOOD).map(|n| {
            let js = js.clone();
            let subject = format!("{prefix}.node.flood-{}", n % 500);
            async move {
                let mut headers = HeaderMap::new();
                headers.insert("Nats-TTL", "5s");
                let body = format!("{{\"node\":\"flood-{}\",\"boot\":1}}", n % 500);
                js.publish_with_headers(subject, headers, body.into()).await.unwrap().await
            }
        });
        let acked = futures::stream::iter(publishes).buffer_unordered(512).filter(|r| std::future::ready(r.is_ok()));
        assert_eq!(acked.count().await, FLOOD, "the stream took the whole flood");
    });
    let mut last = 0;
    for pct in 2..=40 {
        last = app.set_desired("car-flood", Patch::new().window(Window::FrontLeft, pct)).await.unwrap().generation;
    }
    flood.await.unwrap();
    for node in d.nodes() {
        let view = Client::connect(node.url()).await.unwrap();
        eventually("every node converges after the flood", BOUND * 3, || async {
            (view.get_vehicle("car-flood").await.ok()?.generation == last).then_some(())
        })
        .await;
    }
    tokio::time::timeout(BOUND, async {
        loop {
            let event = watch.next().await.expect("the watch goes on").expect("no error");
            if event.vehicle.expect("a vehicle").generation == last {
                return;
            }
        }
    })
    .await
    .expect("the watcher on C sees the last write");
}

/// The NATS link authenticated, with permissions limited to tether's
/// subjects and stream: the cluster works, and the same user can touch
/// nothing else. (Off loopback, TLS and credentials are required before the
/// start: `config.rs`, tested in `config`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_with_a_nats_user_limited_to_tethers_subjects_and_stream() {
    // What tetherd needs of NATS, and nothing more: its subjects, the
    // JetStream API of its own stream, and replies.
    const ACCOUNTS: &str = r#"
accounts {
  FLEET: {
    jetstream: enabled
    users: [{
      user: tether, password: "s3cret-fleet-pass",
      permissions: {
        publish: { allow: ["tether.>", "$JS.API.INFO", "$JS.API.STREAM.INFO.TETHER", "$JS.API.STREAM.CREATE.TETHER",
                           "$JS.API.STREAM.MSG.GET.TETHER", "$JS.API.DIRECT.GET.TETHER.>",
                           "$JS.API.CONSUMER.CREATE.TETHER", "$JS.API.CONSUMER.CREATE.TETHER.>",
                           "$JS.API.CONSUMER.INFO.TETHER.>", "$JS.API.CONSUMER.DELETE.TETHER.>",
                           "$JS.API.CONSUMER.MSG.NEXT.TETHER.>", "$JS.ACK.TETHER.>", "$JS.FC.>"] }
        subscribe: { allow: ["_INBOX.>"] }
      }
    }]
  }
  SYS: { users: [{ user: sys, password: "sys-pass-not-used" }] }
}
system_account: SYS
"#;
    let nats = NatsCluster::start_with_config(3, ACCOUNTS).await;
    let d = Deployment::cluster_at(&nats.urls(), |c| {
        c.cluster_stream = "TETHER".into();
        c.cluster_nats_user = Some("tether".into());
        c.cluster_nats_password = Some("s3cret-fleet-pass".into());
    })
    .await;
    let [a, b, _] = d.nodes() else { panic!("three nodes") };
    let agent = Agent::builder(a.url(), "car-auth")
        .capability(RecordingCapability::new("windows"))
        .default_rate_limit(Duration::ZERO)
        .spawn();
    let mut events = agent.events();
    crate::command_path::event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    let app = Client::connect(b.url()).await.unwrap();
    let out = app.set_desired("car-auth", Patch::new().window(Window::FrontLeft, 5)).wait(WaitLevel::Applied).await;
    assert_eq!(out.expect("applied across nodes").fields[0].status, FieldStatus::Applied);
    agent.shutdown().await;

    // The same user may not publish outside tether's subjects, nor reach
    // another stream's API.
    let servers: Vec<async_nats::ServerAddr> = nats.urls().split(',').map(|u| u.parse().unwrap()).collect();
    let (errors, mut denied) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password("tether".into(), "s3cret-fleet-pass".into())
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = errors.send(e.to_string());
                }
            }
        })
        .connect(servers)
        .await
        .expect("the user connects");
    client.publish("other.subject", "x".into()).await.unwrap();
    client.flush().await.unwrap();
    let refusal = tokio::time::timeout(BOUND, denied.recv()).await.expect("a refusal in time").unwrap();
    assert!(refusal.to_lowercase().contains("permissions violation"), "{refusal}");
    let js = jetstream::new(client);
    let other = js.create_stream(stream::Config {
        name: "OTHER".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    });
    assert!(other.await.is_err(), "no other stream for tether's user");
}
