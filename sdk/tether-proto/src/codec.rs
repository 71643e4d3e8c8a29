//! The gRPC codec of every tether stub: prost, with small per-stream
//! buffers. tonic's default reserves 8 KiB to encode and 8 KiB to decode per
//! stream; tether's messages are a few hundred bytes, and a node holds one
//! stream per vehicle, so the buffers start at 256 bytes and grow when needed.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial encode and decode buffer per stream.
const BUFFER: usize = 256;
/// Encoded bytes gathered before yielding to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with small buffers (see the module docs).
#[derive(Debug)]
pub struct TetherCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for TetherCodec<T, U> {
    fn default() -> Self {
        TetherCodec(std::marker::PhantomData)
    }
}

impl<T, U> Codec for TetherCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
    }
}
