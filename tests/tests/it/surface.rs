//! The operator and browser surface: `grpc.health.v1` turning NOT_SERVING
//! while draining, server reflection listing the services, and a gRPC-Web
//! call over HTTP/1.1 as a browser makes it.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use prost::Message;
use tether_proto::app::v1::SetDesiredResponse;
use tether_proto::vehicle::v1::{GoodbyeReason, server_message};
use tether_tests::{BOUND, RawVehicle, TestServer, channel};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::{set, window};

async fn check(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> ServingStatus {
    let response = client.check(HealthCheckRequest { service: service.into() }).await.expect("health check");
    ServingStatus::try_from(response.into_inner().status).expect("a known status")
}

fn status(response: Option<HealthCheckResponse>) -> Option<ServingStatus> {
    response.map(|r| ServingStatus::try_from(r.status).expect("a known status"))
}

#[tokio::test]
async fn health_turns_not_serving_while_draining_and_new_sessions_are_refused() {
    let server = TestServer::start_with(|c| c.drain_delay = Duration::from_secs(5)).await;
    let url = server.url();
    let ch = server.channel().await;
    let mut health = HealthClient::new(ch.clone());
    for service in ["", "tether.app.v1.ControlService", "tether.vehicle.v1.VehicleService"] {
        assert_eq!(check(&mut health, service).await, ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(status(watch.message().await.unwrap()), Some(ServingStatus::Serving));
    let (mut vehicle, _) = RawVehicle::connect(ch.clone(), "car-drain", 0).await;

    let shutdown = tokio::spawn(server.shutdown());
    // The watcher is told at once; checks answer NOT_SERVING while the node
    // still accepts (the drain delay).
    let next = tokio::time::timeout(BOUND, watch.message()).await.expect("watch answers").unwrap();
    assert_eq!(status(next), Some(ServingStatus::NotServing));
    assert_eq!(check(&mut health, "").await, ServingStatus::NotServing);
    assert_eq!(check(&mut health, "tether.app.v1.ControlService").await, ServingStatus::NotServing);
    // The live session got its goodbye with a reconnect hint...
    let Some(server_message::Kind::Goodbye(bye)) = vehicle.next_non_heartbeat().await else {
        panic!("expected a goodbye");
    };
    assert_eq!(bye.reason, GoodbyeReason::ShuttingDown as i32);
    assert!(bye.reconnect_after.is_some(), "a reconnect hint: {bye:?}");
    // ...and a new session is refused while draining.
    let refused = RawVehicle::refusal(channel(&url).await, "car-late").await;
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    // After the drain delay the watch ends cleanly and shutdown completes.
    let end = tokio::time::timeout(BOUND, watch.message()).await.expect("watch ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    tokio::time::timeout(BOUND, shutdown).await.expect("shutdown within its bound").unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services_and_serves_the_contract_with_comments() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let server = TestServer::start().await;
    let client = ServerReflectionClient::new(server.channel().await);
    let ask = |req: MessageRequest| async {
        let request = ServerReflectionRequest { host: String::new(), message_request: Some(req) };
        let mut client = client.clone();
        let mut answers =
            client.server_reflection_info(futures::stream::iter([request])).await.expect("reflection").into_inner();
        let answer: ServerReflectionResponse = answers.message().await.expect("an answer").expect("one message");
        answer.message_response.expect("a response")
    };

    let MessageResponse::ListServicesResponse(list) = ask(MessageRequest::ListServices(String::new())).await else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for expected in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "tether.admin.v1.AdminService",
        "tether.app.v1.ControlService",
        "tether.vehicle.v1.VehicleService",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }

    let symbol = MessageRequest::FileContainingSymbol("tether.app.v1.ControlService".into());
    let MessageResponse::FileDescriptorResponse(files) = ask(symbol).await else {
        panic!("expected file descriptors");
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(&b[..]).expect("a file descriptor"))
        .collect();
    let app = files.iter().find(|f| f.name() == "tether/app/v1/app.proto").expect("app.proto served");
    assert_eq!(app.service[0].name(), "ControlService");
    let commented =
        app.source_code_info.as_ref().is_some_and(|i| i.location.iter().any(|l| l.leading_comments.is_some()));
    assert!(commented, "the served contract keeps its comments");
}

/// Frames a message as gRPC(-Web) does: flag, big-endian length, bytes.
fn frame(message: &impl Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + body.len());
    framed.put_u8(0);
    framed.put_u32(body.len() as u32);
    framed.put_slice(&body);
    framed.freeze()
}

/// A gRPC-Web SetDesired over HTTP/1.1, from a page on `origin` if given.
fn grpc_web_set(
    server: &TestServer,
    origin: Option<&str>,
    request: tether_proto::app::v1::SetDesiredRequest,
) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::post("/tether.app.v1.ControlService/SetDesired")
        .header(http::header::HOST, server.addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/grpc-web+proto")
        .header("x-grpc-web", "1");
    if let Some(origin) = origin {
        builder = builder.header(http::header::ORIGIN, origin);
    }
    builder.body(Full::new(frame(&request))).unwrap()
}

#[tokio::test]
async fn a_grpc_web_call_over_http1_gets_a_grpc_web_answer() {
    let server = TestServer::start().await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("HTTP/1.1");
    let conn = tokio::spawn(conn);

    // What a browser's grpc-web client sends: an HTTP/1.1 POST, no trailers.
    let request = grpc_web_set(&server, None, set("car-web", "web-1", window(40)));
    let response = tokio::time::timeout(BOUND, sender.send_request(request)).await.expect("answered").unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_11);
    let content_type = response.headers()[http::header::CONTENT_TYPE].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/grpc-web"), "{content_type}");
    let mut body = response.into_body().collect().await.expect("a body").to_bytes();

    // A data frame with the answer, then a trailers frame (flag 0x80) in the body.
    assert_eq!(body.get_u8(), 0, "a data frame first");
    let len = body.get_u32() as usize;
    let answer = SetDesiredResponse::decode(body.split_to(len)).expect("a SetDesiredResponse");
    assert_eq!(answer.generation, 1);
    assert!(!answer.replayed);
    assert_eq!(body.get_u8(), 0x80, "then the trailers frame");
    let len = body.get_u32() as usize;
    let trailers = String::from_utf8(body.split_to(len).to_vec()).unwrap();
    assert!(trailers.to_ascii_lowercase().contains("grpc-status:0"), "{trailers}");

    // The write is real: a gRPC client over HTTP/2 sees it.
    let vehicle = server
        .app()
        .await
        .get_vehicle(tether_proto::app::v1::GetVehicleRequest { vehicle_id: "car-web".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vehicle.generation, 1);
    drop(sender);
    let _ = tokio::time::timeout(BOUND, conn).await;
}

#[tokio::test]
async fn a_browser_on_an_allowed_origin_may_call_grpc_web_across_origins() {
    let server = TestServer::start_with(|c| c.grpc_web_origins = vec!["https://fleet.example".into()]).await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("HTTP/1.1");
    let conn = tokio::spawn(conn);
    let path = "/tether.app.v1.ControlService/SetDesired";
    let preflight = |origin: &str| {
        http::Request::options(path)
            .header(http::header::HOST, server.addr.to_string())
            .header(http::header::ORIGIN, origin)
            .header(http::header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(http::header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type,x-grpc-web,authorization")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    // The browser's preflight: allowed, with the headers gRPC-Web needs.
    let response = tokio::time::timeout(BOUND, sender.send_request(preflight("https://fleet.example")))
        .await
        .expect("answered")
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.status());
    let headers = response.headers();
    assert_eq!(headers[http::header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://fleet.example");
    let allowed = headers[http::header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("x-grpc-web"), "{allowed}");
    let _ = response.into_body().collect().await;

    // The call itself exposes the gRPC status to the page.
    let request = grpc_web_set(&server, Some("https://fleet.example"), set("car-cors", "cors-1", window(10)));
    let response = tokio::time::timeout(BOUND, sender.send_request(request)).await.expect("answered").unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.headers()[http::header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://fleet.example");
    let exposed = response.headers()[http::header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap().to_string();
    assert!(exposed.contains("grpc-status"), "{exposed}");
    let _ = response.into_body().collect().await;

    // Another origin gets no permission.
    let response = tokio::time::timeout(BOUND, sender.send_request(preflight("https://evil.example")))
        .await
        .expect("answered")
        .unwrap();
    assert!(response.headers().get(http::header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());

    // A call with no Origin (not from a page) skips CORS: no CORS header, no Vary.
    let request = grpc_web_set(&server, None, set("car-cors", "cors-2", window(20)));
    let response = tokio::time::timeout(BOUND, sender.send_request(request)).await.expect("answered").unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    let headers = response.headers();
    assert!(headers.get(http::header::VARY).is_none(), "{headers:?}");
    assert!(!headers.keys().any(|k| k.as_str().starts_with("access-control-")), "{headers:?}");
    let _ = response.into_body().collect().await;
    drop(sender);
    let _ = tokio::time::timeout(BOUND, conn).await;
}
