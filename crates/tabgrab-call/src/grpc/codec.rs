//! The protobuf codec of tabgrab's gRPC services: prost's, except that a message that does not
//! decode is `INVALID_ARGUMENT`, not `INTERNAL`.
//!
//! Why: prost's codec answers `INTERNAL` for bytes that are not the request message, as
//! gRPC's status-code table lists for a request that does not parse. But `INTERNAL` means
//! "the server broke", which tabgrab's clients (and most others) retry and alert on, while
//! garbage will never parse: the caller must fix it. So a request that does not decode is
//! refused like every other bad input on every transport, with `INVALID_ARGUMENT`. Every
//! generated service and client here uses this codec (`codec_path` in the build scripts); on
//! the client side a response that does not decode is then `INVALID_ARGUMENT` too, which the
//! client reports as [`InvalidPayload`](tabgrab_core::ErrorKind::InvalidPayload): not
//! retryable, as it should be.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// prost's codec with decoding errors as `INVALID_ARGUMENT`; see the module docs.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// prost's decoder, its errors as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the message is not a valid protobuf {}: {}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message"),
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
