//! The first bytes of a connection: the HTTP/2 client preface (or the first
//! byte of an HTTP/1.1 request), read by tetherd itself within a bound and
//! handed back to hyper in front of the rest of the stream. hyper waits for a
//! preface without any bound, so a socket that never speaks would otherwise
//! hold its connection for ever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a connection was closed before it said anything useful.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Silent {
    /// Nothing (or too little) arrived within the bound.
    #[error("sent no HTTP preface within {0:?}")]
    TimedOut(Duration),
    /// The peer closed or the read failed.
    #[error("closed before its HTTP preface: {0}")]
    Closed(io::Error),
}

/// Reads until the bytes are the whole HTTP/2 preface, or stop being a
/// prefix of it (an HTTP/1.1 request: hyper bounds the rest of its header
/// with `header_read_timeout`), within `bound`. Returns the stream with those
/// bytes put back in front.
pub(crate) async fn read_preface<I>(mut io: I, bound: Duration) -> Result<Prefixed<I>, Silent>
where
    I: AsyncRead + Unpin,
{
    let mut head = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    let read = async {
        while len < head.len() {
            let n = io.read(&mut head[len..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            len += n;
            if head[..len] != H2_PREFACE[..len] {
                break;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(bound, read).await {
        Err(_) => Err(Silent::TimedOut(bound)),
        Ok(Err(e)) => Err(Silent::Closed(e)),
        Ok(Ok(())) => Ok(Prefixed { head, len: len as u8, at: 0, inner: io }),
    }
}

/// A stream that yields `head[at..len]` before reading from `inner`.
pub(crate) struct Prefixed<I> {
    head: [u8; H2_PREFACE.len()],
    len: u8,
    at: u8,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.at < self.len {
            let (at, len) = (usize::from(self.at), usize::from(self.len));
            let n = (len - at).min(buf.remaining());
            buf.put_slice(&self.head[at..at + n]);
            self.at += n as u8;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_preface_is_read_whole_and_given_back() {
        let (mut client, server) = tokio::io::duplex(64);
        // Sent in pieces, followed by a frame.
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        let reading = tokio::spawn(read_preface(server, Duration::from_secs(5)));
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        client.write_all(b"frame").await.unwrap();
        drop(client);
        let mut stream = reading.await.unwrap().unwrap();
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, [&H2_PREFACE[..], b"frame"].concat());
    }

    #[tokio::test]
    async fn an_http1_request_is_handed_over_at_its_first_differing_byte() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"POST /x HTTP/1.1\r\n").await.unwrap();
        let mut stream = read_preface(server, Duration::from_secs(5)).await.unwrap();
        drop(client);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"POST /x HTTP/1.1\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_or_a_partial_preface_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        assert!(matches!(read_preface(server, Duration::from_secs(5)).await, Err(Silent::TimedOut(_))));
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..23]).await.unwrap();
        assert!(matches!(read_preface(server, Duration::from_secs(5)).await, Err(Silent::TimedOut(_))));
    }
}
