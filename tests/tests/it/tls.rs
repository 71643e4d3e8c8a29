//! Mutual TLS on loopback with real certificates: who may connect, and a
//! vehicle identity that comes from the certificate, never from a message.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tether_cli::pki::{ClientNames, DevCa, Issued};
use tether_proto::RawState;
use tether_proto::vehicle::v1::{Goodbye, GoodbyeReason, Hello, server_message};
use tether_tests::{BOUND, RawVehicle, TestServer, eventually};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: DevCa,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let ca = DevCa::new("test fleet CA").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let server = ca.server(&["localhost", "127.0.0.1"], Duration::from_secs(3600)).unwrap();
        write(dir.path(), "server", &server);
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
        Pki { ca, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn server(&self) -> TestServer {
        self.server_with(|_| {}).await
    }

    /// A TLS server on this PKI, with `more` settings on top.
    async fn server_with(&self, more: impl FnOnce(&mut tetherd::Config)) -> TestServer {
        let (cert, key, ca, crl) =
            (self.path("server.pem"), self.path("server.key"), self.path("ca.pem"), self.path("fleet.crl"));
        // An empty CRL to start with; tests revoke by rewriting it. A node
        // restarted on this PKI finds the same files.
        if !crl.exists() {
            std::fs::write(&crl, self.ca.crl(&[]).unwrap()).unwrap();
        }
        TestServer::start_with(move |c| {
            c.tls_cert = Some(cert);
            c.tls_key = Some(key);
            c.client_ca = Some(ca);
            c.crls = vec![crl];
            more(c);
        })
        .await
    }

    fn vehicle(&self, id: &str, valid_for: Duration) -> Issued {
        let now = SystemTime::now();
        self.ca.client(id, now - Duration::from_secs(60), now + valid_for).unwrap()
    }
}

fn write(dir: &Path, name: &str, issued: &Issued) {
    std::fs::write(dir.join(format!("{name}.pem")), &issued.cert_pem).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), &issued.key_pem).unwrap();
}

/// Connects over TLS trusting `ca_pem`, presenting `identity` if any.
async fn connect(
    server: &TestServer,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    connect_as(server, ca_pem, identity, "localhost").await
}

/// Like [`connect`], expecting the server certificate to name `domain`.
async fn connect_as(
    server: &TestServer,
    ca_pem: &str,
    identity: Option<&Issued>,
    domain: &str,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(domain);
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    Endpoint::from_shared(format!("https://{}", server.addr))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Opens a session saying Hello as `vehicle`; returns the first message (and
/// the open session) or the error.
async fn hello(channel: Channel, vehicle: &str) -> Result<(server_message::Kind, RawVehicle), tonic::Status> {
    let hello = Hello { vehicle_id: vehicle.into(), actual: Some(RawState::default()), ..Default::default() };
    let mut v = RawVehicle::open(channel, hello).await?;
    let first = tokio::time::timeout(BOUND, v.rx.message()).await.expect("an answer in time")?;
    Ok((first.and_then(|m| m.kind).expect("a message"), v))
}

/// Reads until the server's goodbye, answering heartbeats to stay alive.
async fn goodbye(v: &mut RawVehicle, within: Duration) -> Goodbye {
    tokio::time::timeout(within, async {
        let mut sequence = 0;
        loop {
            match v.next().await {
                Some(server_message::Kind::Goodbye(g)) => return g,
                Some(_) => {
                    sequence += 1;
                    v.heartbeat(sequence).await;
                }
                None => panic!("closed without a goodbye"),
            }
        }
    })
    .await
    .expect("a goodbye in time")
}

#[tokio::test]
async fn only_valid_client_certificates_from_the_fleet_ca_get_in() {
    let pki = Pki::new();
    let server = pki.server().await;
    let good = pki.vehicle("car-1", Duration::from_secs(3600));
    let channel = connect(&server, &pki.ca.cert_pem, Some(&good)).await.unwrap();
    assert!(matches!(hello(channel, "car-1").await.unwrap().0, server_message::Kind::Welcome(_)));

    let stranger_ca = DevCa::new("someone else's CA").unwrap();
    let now = SystemTime::now();
    let cases = [
        ("no client certificate", None),
        (
            "a certificate from an unknown CA",
            Some(stranger_ca.client("car-1", now, now + Duration::from_secs(3600)).unwrap()),
        ),
        (
            "an expired certificate",
            Some(pki.ca.client("car-1", now - Duration::from_secs(7200), now - Duration::from_secs(3600)).unwrap()),
        ),
    ];
    for (what, identity) in cases {
        let before = server.handshake_failures();
        // TLS 1.3 lets the client finish before the server has checked its
        // certificate, so the refusal may surface at connect or at the first call.
        let refused = match connect(&server, &pki.ca.cert_pem, identity.as_ref()).await {
            Err(_) => true,
            Ok(channel) => hello(channel, "car-1").await.is_err(),
        };
        assert!(refused, "{what} must be refused");
        eventually(&format!("{what}: counted as a failed handshake"), BOUND, || async {
            (server.handshake_failures() > before).then_some(())
        })
        .await;
    }
    // The server keeps serving.
    let channel = connect(&server, &pki.ca.cert_pem, Some(&good)).await.unwrap();
    assert!(matches!(hello(channel, "car-1").await.unwrap().0, server_message::Kind::Welcome(_)));
}

#[tokio::test]
async fn a_certificate_for_one_vehicle_cannot_say_hello_as_another() {
    let pki = Pki::new();
    let server = pki.server().await;
    let car_a = pki.vehicle("car-a", Duration::from_secs(3600));
    let channel = connect(&server, &pki.ca.cert_pem, Some(&car_a)).await.unwrap();
    let err = hello(channel.clone(), "car-b").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("car-a") && err.message().contains("car-b"), "{}", err.message());
    assert_eq!(server.stats().sessions, 0);
    // The same connection may be car-a.
    assert!(matches!(hello(channel, "car-a").await.unwrap().0, server_message::Kind::Welcome(_)));
}

#[tokio::test]
async fn only_a_certificate_naming_exactly_one_vehicle_opens_its_session() {
    use tether_proto::app::v1::control_service_client::ControlServiceClient;
    use tether_proto::state::v1::{Doors, LockState, VehicleState};

    let pki = Pki::new();
    let server = pki.server_with(|c| c.services = vec![("app".into(), "vehicles:read vehicles:control".into())]).await;
    // car-1's doors are to be unlocked: what an impersonator would receive.
    let app_cert = pki.vehicle("app", Duration::from_secs(3600));
    let mut app = ControlServiceClient::new(connect(&server, &pki.ca.cert_pem, Some(&app_cert)).await.unwrap());
    let unlock = VehicleState { doors: Some(Doors { lock: Some(LockState::Unlocked as i32) }), ..Default::default() };
    app.set_desired(crate::set("car-1", "k1", unlock)).await.unwrap();

    let hour = Duration::from_secs(3600);
    let shaped = |names: ClientNames<'_>| pki.ca.client_with_names(&names, hour).unwrap();
    let ip = ["10.0.0.7".parse().unwrap()];
    let refused = [
        ("CN only", shaped(ClientNames { common_name: Some("car-1"), ..Default::default() }), "no DNS subject"),
        (
            "CN and DNS SAN disagreeing",
            shaped(ClientNames { common_name: Some("car-2"), dns: &["car-1"], ..Default::default() }),
            "several names",
        ),
        ("several DNS SANs", shaped(ClientNames { dns: &["car-1", "car-2"], ..Default::default() }), "several names"),
        (
            "CN and an IP SAN",
            shaped(ClientNames { common_name: Some("car-1"), ips: &ip, ..Default::default() }),
            "no DNS",
        ),
        (
            "CN and a URI SAN",
            shaped(ClientNames { common_name: Some("car-1"), uris: &["spiffe://fleet/car-1"], ..Default::default() }),
            "no DNS",
        ),
        ("empty subject, an IP SAN only", shaped(ClientNames { ips: &ip, ..Default::default() }), "no DNS"),
        ("a declared service's", app_cert.clone(), "service \"app\""),
    ];
    let no_identity = || server.handshake_failures_for(tetherd::stats::HandshakeFailure::NoIdentity);
    for (i, (shape, cert, says)) in refused.iter().enumerate() {
        let channel = connect(&server, &pki.ca.cert_pem, Some(cert)).await.unwrap();
        let vehicle = if *shape == "a declared service's" { "app" } else { "car-1" };
        let err = hello(channel, vehicle).await.expect_err(shape);
        assert_eq!(err.code(), Code::PermissionDenied, "{shape}: {err:?}");
        assert!(err.message().contains(says), "{shape}: {}", err.message());
        assert_eq!(no_identity(), i as u64 + 1, "{shape}: counted");
    }
    assert_eq!(server.stats().sessions, 0, "no session opened");

    // A session that resumes with a ticket is held to the same rule.
    let cn_only = &refused[0].1;
    let endpoint = tls_endpoint(server.addr, &pki.ca.cert_pem, cn_only);
    for _ in 0..2 {
        let err = hello(endpoint.connect().await.unwrap(), "car-1").await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    assert!(server.tls_handshakes().1 >= 1, "the second connection resumed");
    // So is one after a reload of the TLS files.
    let reloads = server.tls_reloads();
    std::fs::write(pki.path("fleet.crl"), pki.ca.crl(&[b"\x01\x02".as_slice()]).unwrap()).unwrap();
    eventually("the TLS files are reloaded", BOUND, || async { (server.tls_reloads() > reloads).then_some(()) }).await;
    let err = hello(endpoint.connect().await.unwrap(), "car-1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "after a reload: {err:?}");

    // A certificate that names car-1 alone, in its DNS name (and its CN, if
    // any), gets car-1's session and its desired state.
    for names in [
        ClientNames { dns: &["car-1"], ..Default::default() },
        ClientNames { common_name: Some("car-1"), dns: &["car-1"], ips: &ip, ..Default::default() },
    ] {
        let channel = connect(&server, &pki.ca.cert_pem, Some(&shaped(names))).await.unwrap();
        let (welcome, mut v) = hello(channel, "car-1").await.unwrap();
        assert!(matches!(welcome, server_message::Kind::Welcome(_)), "{names:?}: {welcome:?}");
        assert!(matches!(v.next_non_heartbeat().await, Some(server_message::Kind::Desired(_))), "{names:?}");
    }

    // A certificate that names no one is no service either.
    let mut stranger = ControlServiceClient::new(
        connect(
            &server,
            &pki.ca.cert_pem,
            Some(&shaped(ClientNames { common_name: Some("app"), ..Default::default() })),
        )
        .await
        .unwrap(),
    );
    let err = stranger.set_desired(crate::set("car-1", "k2", crate::window(100))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("not a declared service"), "{}", err.message());
}

#[tokio::test]
async fn the_real_binary_refuses_a_certificate_with_a_common_name_and_no_dns_name() {
    let pki = Pki::new();
    std::fs::write(pki.path("fleet.crl"), pki.ca.crl(&[]).unwrap()).unwrap();
    let files = ["server.pem", "server.key", "ca.pem"].map(|f| pki.path(f).display().to_string());
    let data = tempfile::tempdir().unwrap();
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"));
    let args = ["--tls-cert", &files[0], "--tls-key", &files[1], "--client-ca", &files[2]];
    let server = tether_tests::ChildServer::start_with_args(&binary, data.path(), None, &args).await;
    let connect = |names: ClientNames<'static>| {
        let cert = pki.ca.client_with_names(&names, Duration::from_secs(3600)).unwrap();
        let addr = server.addr;
        let ca = pki.ca.cert_pem.clone();
        async move { tls_endpoint(addr, &ca, &cert).connect().await.unwrap() }
    };
    let err = hello(connect(ClientNames { common_name: Some("car-1"), ..Default::default() }).await, "car-1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("names no vehicle"), "{}", err.message());
    let (welcome, _v) =
        hello(connect(ClientNames { dns: &["car-1"], ..Default::default() }).await, "car-1").await.unwrap();
    assert!(matches!(welcome, server_message::Kind::Welcome(_)));
}

#[tokio::test]
async fn under_the_cn_rule_the_common_name_names_the_vehicle_and_nothing_may_disagree() {
    let pki = Pki::new();
    let server = pki.server_with(|c| c.vehicle_identity = tetherd::tls::IdentityFrom::Cn).await;
    let hour = Duration::from_secs(3600);
    let shaped = |names: ClientNames<'_>| pki.ca.client_with_names(&names, hour).unwrap();
    let cases = [
        (ClientNames { common_name: Some("car-1"), ..Default::default() }, None),
        (ClientNames { common_name: Some("car-1"), uris: &["urn:vin:1"], ..Default::default() }, None),
        (ClientNames { dns: &["car-1"], ..Default::default() }, Some("no common name")),
        (ClientNames { common_name: Some("car-1"), dns: &["car-9"], ..Default::default() }, Some("several names")),
    ];
    for (names, refusal) in cases {
        let channel = connect(&server, &pki.ca.cert_pem, Some(&shaped(names))).await.unwrap();
        match (hello(channel, "car-1").await, refusal) {
            (Ok((server_message::Kind::Welcome(_), _)), None) => {}
            (Err(err), Some(says)) => {
                assert_eq!(err.code(), Code::PermissionDenied, "{names:?}");
                assert!(err.message().contains(says), "{names:?}: {}", err.message());
            }
            (other, _) => panic!("{names:?}: {other:?}"),
        }
    }
}

/// An endpoint presenting `identity`: its connections share one client TLS
/// configuration, and so its ticket store, as an agent's do.
fn tls_endpoint(addr: std::net::SocketAddr, ca_pem: &str, identity: &Issued) -> Endpoint {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap()
}

#[tokio::test]
async fn a_restarted_node_resumes_tls_sessions_but_never_for_an_expired_certificate() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let first = pki.server_with(|c| c.data_dir = data.path().to_path_buf()).await;
    let addr = first.addr;
    let car = pki.vehicle("car-t", Duration::from_secs(3600));
    let endpoint = tls_endpoint(addr, &pki.ca.cert_pem, &car);
    let (kind, v) = hello(endpoint.connect().await.unwrap(), "car-t").await.unwrap();
    assert!(matches!(kind, server_message::Kind::Welcome(_)), "{kind:?}");
    assert_eq!(first.tls_handshakes(), (1, 0));
    drop(v);
    first.shutdown().await;

    // The same node again, on the same port and data: the vehicle's ticket
    // from before the restart resumes, and names the vehicle.
    let again = pki
        .server_with(|c| {
            c.data_dir = data.path().to_path_buf();
            c.listen = addr;
        })
        .await;
    let (kind, _v) = hello(endpoint.connect().await.unwrap(), "car-t").await.unwrap();
    assert!(matches!(kind, server_message::Kind::Welcome(_)), "{kind:?}");
    assert_eq!(again.tls_handshakes(), (0, 1));

    // A certificate that expires after its ticket was issued: the resumed
    // handshake brings the old certificate, and the node refuses it.
    let brief = pki.vehicle("car-brief", Duration::from_secs(2));
    let brief_endpoint = tls_endpoint(addr, &pki.ca.cert_pem, &brief);
    let (kind, v) = hello(brief_endpoint.connect().await.unwrap(), "car-brief").await.unwrap();
    assert!(matches!(kind, server_message::Kind::Welcome(_)), "{kind:?}");
    drop(v);
    let expired = SystemTime::now() + Duration::from_secs(3);
    eventually("the certificate expires", BOUND, || async { (SystemTime::now() > expired).then_some(()) }).await;
    let refused_before = again.handshake_failures();
    let refused = match brief_endpoint.connect().await {
        Err(_) => true,
        Ok(channel) => hello(channel, "car-brief").await.is_err(),
    };
    assert!(refused, "an expired certificate is refused even when its session resumes");
    assert_eq!(again.handshake_failures(), refused_before + 1);
    assert_eq!(again.tls_handshakes(), (1, 2), "the refused connection had resumed: the node refused it, not rustls");
}

#[tokio::test]
async fn a_session_ends_when_its_certificate_expires() {
    let pki = Pki::new();
    let server = pki.server().await;
    // X.509 times are whole seconds: 4 s leaves at least 3 for the handshake.
    let short = pki.vehicle("car-short", Duration::from_secs(4));
    let channel = connect(&server, &pki.ca.cert_pem, Some(&short)).await.unwrap();
    let (mut v, _) = RawVehicle::connect(channel, "car-short", 0).await;
    let bye = goodbye(&mut v, Duration::from_secs(10)).await;
    assert_eq!(bye.reason, GoodbyeReason::CredentialsExpired as i32);
}

#[tokio::test]
async fn plaintext_on_a_non_loopback_address_refuses_to_start() {
    let stderr = crate::refused_start(&["--listen", "0.0.0.0:0"]).await;
    assert!(stderr.contains("0.0.0.0:0") && stderr.contains("refusing to serve plaintext"), "{stderr}");
    assert!(stderr.contains("tether certs"), "says how to set it up: {stderr}");
}

#[tokio::test]
async fn the_cli_makes_a_development_pki_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether-cli-under-test"))
        .args(["certs", "--vehicles", "car-9", "--services", "app", "--out"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--client-ca"));
    let path = |name: &str| dir.path().join(name);
    let server = TestServer::start_with(|c| {
        c.tls_cert = Some(path("server.pem"));
        c.tls_key = Some(path("server.key"));
        c.client_ca = Some(path("ca.pem"));
    })
    .await;
    let read = |name: &str| std::fs::read_to_string(path(name)).unwrap();
    let car = Issued { cert_pem: read("car-9.pem"), key_pem: read("car-9.key"), serial: Vec::new() };
    let channel = connect(&server, &read("ca.pem"), Some(&car)).await.unwrap();
    assert!(matches!(hello(channel, "car-9").await.unwrap().0, server_message::Kind::Welcome(_)));
}

#[tokio::test]
async fn revoking_a_connected_vehicle_closes_its_session_within_a_few_polls() {
    let pki = Pki::new();
    let server = pki.server().await;
    let car = pki.vehicle("car-r", Duration::from_secs(3600));
    let channel = connect(&server, &pki.ca.cert_pem, Some(&car)).await.unwrap();
    let (mut v, _) = RawVehicle::connect(channel, "car-r", 0).await;

    let crl = pki.ca.crl(&[&car.serial]).unwrap();
    std::fs::write(pki.path("fleet.crl"), crl).unwrap();
    let revoked_at = std::time::Instant::now();
    let goodbye = goodbye(&mut v, Duration::from_secs(5)).await;
    let took = revoked_at.elapsed();
    assert!(goodbye.message.contains("revoked"), "{goodbye:?}");
    // The CRL is polled every 250 ms (a poll that reads it half-written
    // waits for the next): well under 2 s even on a loaded machine.
    assert!(took < Duration::from_secs(2), "closed {took:?} after the CRL changed");
    drop(v);

    // It cannot come back; another vehicle can.
    let again = match connect(&server, &pki.ca.cert_pem, Some(&car)).await {
        Err(_) => true,
        Ok(channel) => hello(channel, "car-r").await.is_err(),
    };
    assert!(again, "a revoked certificate is refused at the handshake");
    let other = pki.vehicle("car-ok", Duration::from_secs(3600));
    let channel = connect(&server, &pki.ca.cert_pem, Some(&other)).await.unwrap();
    assert!(matches!(hello(channel, "car-ok").await.unwrap().0, server_message::Kind::Welcome(_)));
}

#[tokio::test]
async fn a_new_server_certificate_is_used_without_dropping_sessions() {
    let pki = Pki::new();
    // The session below stays silent across several handshakes and reload
    // polls: a heartbeat interval longer than the test, so that silence is
    // never what ends it.
    let server = pki.server_with(|c| c.heartbeat_interval = Duration::from_secs(30)).await;
    let car = pki.vehicle("car-k", Duration::from_secs(3600));
    let channel = connect(&server, &pki.ca.cert_pem, Some(&car)).await.unwrap();
    let (welcome, session) = hello(channel, "car-k").await.unwrap();
    assert!(matches!(welcome, server_message::Kind::Welcome(_)));
    // The first certificate does not name tether.test.
    assert!(connect_as(&server, &pki.ca.cert_pem, Some(&car), "tether.test").await.is_err());

    let renewed = pki.ca.server(&["tether.test", "localhost"], Duration::from_secs(3600)).unwrap();
    // Key first, then certificate: a poll between the two writes fails to
    // load and keeps the previous configuration.
    std::fs::write(pki.path("server.key"), &renewed.key_pem).unwrap();
    std::fs::write(pki.path("server.pem"), &renewed.cert_pem).unwrap();
    eventually("the renewed certificate is served", BOUND, || async {
        connect_as(&server, &pki.ca.cert_pem, Some(&car), "tether.test").await.ok().map(|_| ())
    })
    .await;
    // The session opened before the reload is still alive.
    assert_eq!(server.stats().sessions, 1);
    drop(session);
}

#[tokio::test]
async fn services_may_authenticate_with_their_own_certificates() {
    use tether_proto::app::v1::GetVehicleRequest;
    use tether_proto::app::v1::control_service_client::ControlServiceClient;

    let pki = Pki::new();
    let server =
        pki.server_with(|c| c.services = vec![("fleet-app".into(), "vehicles:read vehicles:control".into())]).await;
    let now = SystemTime::now();
    let service = pki.ca.client("fleet-app", now - Duration::from_secs(60), now + Duration::from_secs(3600)).unwrap();
    let mut app = ControlServiceClient::new(connect(&server, &pki.ca.cert_pem, Some(&service)).await.unwrap());
    app.set_desired(crate::set("car-s", "k1", crate::window(30))).await.unwrap();
    let view = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-s".into() }).await.unwrap().into_inner();
    assert_eq!(view.fields[0].set_by, "service:fleet-app");

    // A vehicle's certificate is not a service's: it may not control anything.
    let car = pki.vehicle("car-s", Duration::from_secs(3600));
    let mut intruder = ControlServiceClient::new(connect(&server, &pki.ca.cert_pem, Some(&car)).await.unwrap());
    let err = intruder.set_desired(crate::set("car-s", "k2", crate::window(100))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}

#[tokio::test]
async fn over_the_connection_cap_a_tls_client_is_told_why() {
    let pki = Pki::new();
    let server = pki.server_with(|c| c.max_connections = 1).await;
    let first = pki.vehicle("car-1", Duration::from_secs(3600));
    let (welcome, _session) =
        hello(connect(&server, &pki.ca.cert_pem, Some(&first)).await.unwrap(), "car-1").await.unwrap();
    assert!(matches!(welcome, server_message::Kind::Welcome(_)));
    let second = pki.vehicle("car-2", Duration::from_secs(3600));
    let channel = connect(&server, &pki.ca.cert_pem, Some(&second)).await.unwrap();
    let err = hello(channel, "car-2").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("connection limit (1)"), "{}", err.message());
}

#[tokio::test]
async fn sockets_that_never_start_a_handshake_hold_no_handshake_slot() {
    let pki = Pki::new();
    // Four handshake slots, and silent sockets given a minute to speak.
    let server = pki
        .server_with(|c| {
            c.max_handshakes = 4;
            c.preface_timeout = Duration::from_secs(60);
        })
        .await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    eventually("the silent sockets are accepted", BOUND, || async {
        (server.stats().connections >= 300).then_some(())
    })
    .await;
    // Real vehicles still connect at once: a slot is taken only once a
    // ClientHello arrived.
    let started = std::time::Instant::now();
    for i in 0..8 {
        let car = pki.vehicle(&format!("car-{i}"), Duration::from_secs(3600));
        let channel = connect(&server, &pki.ca.cert_pem, Some(&car)).await.unwrap();
        let (welcome, _v) = hello(channel, &format!("car-{i}")).await.unwrap();
        assert!(matches!(welcome, server_message::Kind::Welcome(_)));
    }
    assert!(started.elapsed() < Duration::from_secs(3), "8 vehicles took {:?}", started.elapsed());
    drop(silent);
}

/// Runs the CLI binary with `args`, bounded.
async fn cli(args: &[&str]) -> std::process::Output {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tether-cli-under-test")).args(args).output();
    tokio::time::timeout(Duration::from_secs(30), out).await.expect("the CLI finishes").expect("the CLI runs")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn the_simulator_and_the_cli_take_certificates_and_tokens() {
    use tether_examples::faults::Faults;
    use tether_examples::sim::{Fleet, FleetConfig, FleetTls};

    // The development PKI, as a newcomer makes it.
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().to_str().unwrap().to_string();
    let out = cli(&["certs", "--vehicles", "sim-0000,sim-0001", "--services", "app,dashboard", "--out", &pki]).await;
    assert!(out.status.success(), "{}", text(&out));
    let path = |name: &str| dir.path().join(name);
    let server = TestServer::start_with(|c| {
        c.tls_cert = Some(path("server.pem"));
        c.tls_key = Some(path("server.key"));
        c.client_ca = Some(path("ca.pem"));
        c.jwks = Some(path("jwks.json"));
        c.jwt_issuer = Some(tether_cli::pki::DEV_ISSUER.into());
        c.jwt_audience = Some(tether_cli::pki::DEV_AUDIENCE.into());
        c.services = vec![("app".into(), "vehicles:read vehicles:control".into())];
    })
    .await;
    let url = format!("https://localhost:{}", server.addr.port());

    // Two simulated vehicles with their own certificates, through the
    // simulator's link proxies (which pass TLS through).
    let config = FleetConfig {
        server: url.clone(),
        vehicles: 2,
        per_connection: 1,
        apply_min: Duration::from_millis(5),
        apply_max: Duration::from_millis(20),
        unparked_share: 0.0,
        faults: Faults {
            drop_per_minute: 0.0,
            stall_per_minute: 0.0,
            stall_for: Duration::ZERO,
            delay: Duration::ZERO,
        },
        state_dir: None,
        tls: Some(FleetTls { ca: path("ca.pem"), cert_dir: dir.path().to_path_buf(), domain: None }),
        source_addresses: 1,
    };
    let shared = FleetConfig { per_connection: 2, ..config.clone() };
    let err = Fleet::start(&shared).await.unwrap_err().to_string();
    assert!(err.contains("--per-connection 1"), "{err}");
    // Spreading over 127.0.0.x source addresses cannot reach a server named
    // by a host name (localhost may be ::1).
    let spread = FleetConfig { source_addresses: 2, ..config.clone() };
    let err = Fleet::start(&spread).await.unwrap_err().to_string();
    assert!(err.contains("loopback IPv4 address (not localhost)"), "{err}");
    let fleet = Fleet::start(&config).await.unwrap();
    eventually("the fleet connects over mTLS", BOUND, || async { (fleet.status().connected == 2).then_some(()) }).await;

    // The CLI with a service certificate writes and waits for APPLIED.
    let ca = path("ca.pem").display().to_string();
    let client = |name: &str| {
        let (cert, key) = (path(&format!("{name}.pem")), path(&format!("{name}.key")));
        [
            "--server".to_string(),
            url.clone(),
            "--ca".into(),
            ca.clone(),
            "--client-cert".into(),
            cert.display().to_string(),
            "--client-key".into(),
            key.display().to_string(),
        ]
    };
    let as_app: Vec<String> = client("app").to_vec();
    let as_app: Vec<&str> = as_app.iter().map(String::as_str).collect();
    let out = cli(&[&as_app[..], &["set", "sim-0001", "windows.front_left=30"]].concat()).await;
    assert!(out.status.success() && text(&out).contains("APPLIED"), "{}", text(&out));

    // A token over a certificate that is no declared service: the token
    // decides. `tether tokens` mints one; it reads the audit trail.
    let signing_key = path("jwt-signing.key").display().to_string();
    let out = cli(&["tokens", "--key", &signing_key, "--subject", "auditor", "--scope", "audit:read"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dashboard: Vec<String> = client("dashboard").to_vec();
    let dashboard: Vec<&str> = dashboard.iter().map(String::as_str).collect();
    let out = cli(&[&dashboard[..], &["--token", token.as_str(), "--json", "audit", "sim-0001"]].concat()).await;
    assert!(out.status.success(), "{}", text(&out));
    let record: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(record["subject"], "service:app", "{record}");
    assert_eq!(record["outcome"], "ACCEPTED", "{record}");
    assert_eq!(record["values"]["windows.front_left"], 30, "{record}");
    // The same token may not write; a certificate alone that is no service
    // is not authenticated; missing TLS options are said as such.
    let out = cli(&[&dashboard[..], &["--token", &token, "set", "sim-0001", "windows.front_left=40"]].concat()).await;
    assert!(!out.status.success() && text(&out).contains("PERMISSION_DENIED"), "{}", text(&out));
    let out = cli(&[&dashboard[..], &["list"]].concat()).await;
    assert!(!out.status.success() && text(&out).contains("UNAUTHENTICATED"), "{}", text(&out));
    let out = cli(&["--server", url.as_str(), "list"]).await;
    assert!(!out.status.success() && text(&out).contains("needs --ca"), "{}", text(&out));
    let out = cli(&["--server", url.as_str(), "--ca", ca.as_str(), "list"]).await;
    assert!(!out.status.success() && text(&out).contains("--client-cert"), "{}", text(&out));
    let out = cli(&["--server", &server.url(), "--ca", ca.as_str(), "list"]).await;
    assert!(!out.status.success() && text(&out).contains("https://"), "{}", text(&out));
    fleet.shutdown().await;
}
