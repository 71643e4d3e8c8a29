//! Bad input gets a clear status, loses nothing, and the server keeps serving.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tether_proto::RawState;
use tether_proto::app::v1::GetVehicleRequest;
use tether_proto::state::v1::{Doors, VehicleState, Windows};
use tether_proto::vehicle::v1::ServerMessage;
use tether_tests::{RawVehicle, TestServer};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::{set, window};

#[tokio::test]
async fn invalid_writes_name_the_problem_and_change_nothing() {
    let server = TestServer::start().await;
    let mut app = server.app().await;
    app.set_desired(set("car-b", "ok", window(20))).await.unwrap();

    let too_open =
        VehicleState { windows: Some(Windows { sunroof: Some(140), ..Default::default() }), ..Default::default() };
    let err = app.set_desired(set("car-b", "k1", too_open)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("windows.sunroof") && err.message().contains("maximum 100"), "{}", err.message());

    let unknown_enum = VehicleState { doors: Some(Doors { lock: Some(42) }), ..Default::default() };
    let err = app.set_desired(set("car-b", "k2", unknown_enum)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("doors.lock"), "{}", err.message());

    let err = app.set_desired(set("car b!", "k3", window(1))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("invalid vehicle id"), "{}", err.message());

    let err = app.set_desired(set("car-b", "", window(1))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("idempotency_key"), "{}", err.message());

    let mut empty = set("car-b", "k4", VehicleState::default());
    empty.patch = Some(RawState::default());
    assert_eq!(app.set_desired(empty).await.unwrap_err().code(), Code::InvalidArgument);

    let err = app.get_vehicle(GetVehicleRequest { vehicle_id: "nobody".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app.get_vehicle(GetVehicleRequest { vehicle_id: "../etc".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // An oversized request (64 KiB limit by default).
    let err = app.set_desired(set("car-b", &"k".repeat(100_000), window(1))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Nothing was lost or changed, and the server still serves.
    let v = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-b".into() }).await.unwrap().into_inner();
    assert_eq!(v.generation, 1);
    assert_eq!(v.desired.unwrap().decode_typed().unwrap(), window(20));
}

/// Sends raw bytes as gRPC messages; decodes server messages normally.
#[derive(Default)]
struct RawBytesCodec;

struct RawEncoder;
struct ProstDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ProstDecoder {
    type Item = ServerMessage;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ServerMessage>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        prost::Message::decode(bytes).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for RawBytesCodec {
    type Encode = Bytes;
    type Decode = ServerMessage;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ProstDecoder {
        ProstDecoder
    }
}

#[tokio::test]
async fn garbage_on_a_vehicle_stream_closes_that_stream_only() {
    // `healthy` stays silent while the bad streams are refused.
    let server = TestServer::start_with(|c| c.heartbeat_interval = Duration::from_secs(30)).await;
    let (mut healthy, _) = RawVehicle::connect(server.channel().await, "car-ok", 0).await;

    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    // 0xff... is not a valid protobuf encoding (field 0 / truncated varint).
    let garbage = futures::stream::iter([Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])]);
    let path = http::uri::PathAndQuery::from_static("/tether.vehicle.v1.VehicleService/Connect");
    let result = grpc.streaming(tonic::Request::new(garbage), path, RawBytesCodec).await;
    let status = match result {
        Err(status) => status,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("stream ended without an error"),
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed"), "{}", status.message());

    // An oversized vehicle message ends that stream with RESOURCE_EXHAUSTED.
    let mut big = Vec::with_capacity(70_000);
    big.put_u8(0x0a); // field 1 (hello), length-delimited
    prost::encoding::encode_varint(69_990, &mut big);
    big.resize(70_000, 0);
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/tether.vehicle.v1.VehicleService/Connect");
    let stream = futures::stream::iter([Bytes::from(big)]);
    let status = match grpc.streaming(tonic::Request::new(stream), path, RawBytesCodec).await {
        Err(status) => status,
        Ok(resp) => resp.into_inner().message().await.expect_err("oversized message refused"),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The other vehicle's session is untouched.
    healthy.heartbeat(1).await;
    assert!(healthy.next().await.is_some());
    assert_eq!(server.stats().sessions, 1);
}
