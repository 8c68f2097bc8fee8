//! The unix socket's HTTP/2 `:authority` mender: it lets every standard gRPC client call the
//! agent over its unix socket with default settings.
//!
//! A unix socket has no host name, and clients fill `:authority` in as they see fit: grpc-go
//! and tonic send `localhost`; the gRPC C core (Python's and Ruby's `grpcio`, C++) sends the
//! socket's path without its leading slash and with its slashes percent-encoded
//! (`run%2Ffaultline%2Ffaultline.sock`, seen with grpcio 1.85); grpc-java sends the path as it
//! is. The HTTP/2 server underneath tonic parses `:authority` as a URI authority, in which
//! neither `%` nor `/` may stand, and resets the stream (RST_STREAM, PROTOCOL_ERROR) when it
//! is not one, with no setting to relax that. On the unix socket the authority carries no
//! meaning — the socket's permissions and the policy (by the peer's uid) decide who may call —
//! so this module replaces an `:authority` that is not a valid URI authority with `localhost`
//! before the server sees it, and leaves everything else as the client sent it.
//!
//! Written by hand because no crate does it: it reads the client's frames (RFC 9113 §4.1),
//! decodes each header block with its own HPACK decoder (the client's compression context),
//! mends `:authority`, and encodes the block again with its own HPACK encoder, which becomes
//! the server's only compression peer. Every other frame passes through untouched, and a
//! payload that has not arrived yet is read straight into the server's buffer. The server's replies are not touched at all.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::{codegen::http::uri::Authority, transport::server::Connected};
use tracing::debug;

/// What a client must send first on an HTTP/2 connection with prior knowledge.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Every HTTP/2 peer must accept frames of this size (SETTINGS_MAX_FRAME_SIZE's floor), so the
/// mended blocks are cut to it whatever the server announced.
const MAX_FRAME: usize = 16_384;
/// A header block longer than this is refused: the server's own limit on a header list is
/// far lower, and this bounds what one connection can make the agent buffer.
const MAX_BLOCK: usize = 1 << 20;
/// The dynamic table size the client may ask the decoder for; HPACK's default is 4096 and
/// the server announces no other.
const MAX_TABLE: usize = 1 << 16;
/// What an unusable `:authority` becomes: what grpc-go and tonic send on a unix socket.
const LOCALHOST: &[u8] = b"localhost";

/// A connection from the unix socket whose client-to-server stream has its `:authority`
/// headers mended; writes go to the socket as they are.
pub(crate) struct MendAuthority<S> {
    inner: S,
    state: State,
    /// Bytes read from the client and not yet parsed.
    input: Vec<u8>,
    /// Bytes parsed (and where needed rewritten), waiting to be read by the server.
    output: Vec<u8>,
    output_at: usize,
    /// A header block whose CONTINUATION frames are still coming.
    pending: Option<PendingBlock>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the connection preface.
    Preface,
    /// At a frame boundary.
    Frame,
    /// Inside the payload of a frame that passes through, with this many bytes to go.
    Through(usize),
    /// Not HTTP/2 with prior knowledge: everything passes through, and the server answers it.
    Raw,
}

struct PendingBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<S> MendAuthority<S> {
    pub(crate) fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE);
        Self {
            inner,
            state: State::Preface,
            input: Vec::new(),
            output: Vec::new(),
            output_at: 0,
            pending: None,
            decoder,
            encoder: Encoder::new(),
        }
    }

    /// Parses what `input` holds as far as it goes; moves what is ready into `output`.
    fn parse(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Preface => {
                    let seen = self.input.len().min(PREFACE.len());
                    if self.input[..seen] != PREFACE[..seen] {
                        self.state = State::Raw;
                        self.output.append(&mut self.input);
                        return Ok(());
                    }
                    if seen < PREFACE.len() {
                        return Ok(());
                    }
                    self.output.extend(self.input.drain(..PREFACE.len()));
                    self.state = State::Frame;
                }
                State::Frame => {
                    if self.input.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let head = FrameHead::parse(&self.input[..FRAME_HEADER]);
                    let is_block = head.kind == HEADERS || head.kind == CONTINUATION;
                    if is_block || self.pending.is_some() {
                        if head.length > MAX_FRAME.max(MAX_BLOCK) {
                            return Err(invalid("a header frame longer than any server accepts"));
                        }
                        if self.input.len() < FRAME_HEADER + head.length {
                            return Ok(());
                        }
                        let frame: Vec<u8> =
                            self.input.drain(..FRAME_HEADER + head.length).collect();
                        self.header_frame(head, &frame[FRAME_HEADER..])?;
                        continue;
                    }
                    self.output.extend(self.input.drain(..FRAME_HEADER));
                    self.state = State::Through(head.length);
                }
                State::Through(remaining) => {
                    let here = self.input.len().min(remaining);
                    self.output.extend(self.input.drain(..here));
                    if here < remaining {
                        self.state = State::Through(remaining - here);
                        return Ok(());
                    }
                    self.state = State::Frame;
                }
                State::Raw => {
                    self.output.append(&mut self.input);
                    return Ok(());
                }
            }
        }
    }

    /// A HEADERS or CONTINUATION frame, or a frame that breaks off a header block.
    fn header_frame(&mut self, head: FrameHead, payload: &[u8]) -> io::Result<()> {
        match (head.kind, self.pending.as_mut()) {
            (CONTINUATION, Some(pending)) if pending.stream == head.stream => {
                if pending.block.len() + payload.len() > MAX_BLOCK {
                    return Err(invalid("a header block over 1 MiB"));
                }
                pending.block.extend_from_slice(payload);
            }
            (HEADERS, None) => {
                let mut fragment = payload;
                if head.flags & PADDED != 0 {
                    let (&pad, rest) = fragment
                        .split_first()
                        .ok_or_else(|| invalid("a padded HEADERS frame without its pad length"))?;
                    fragment = rest
                        .get(..rest.len().wrapping_sub(usize::from(pad)))
                        .filter(|_| usize::from(pad) <= rest.len())
                        .ok_or_else(|| invalid("a HEADERS frame padded past its end"))?;
                }
                let priority = if head.flags & PRIORITY != 0 {
                    let (fields, rest) = fragment
                        .split_first_chunk::<5>()
                        .ok_or_else(|| invalid("a HEADERS frame too short for its priority"))?;
                    fragment = rest;
                    Some(*fields)
                } else {
                    None
                };
                self.pending = Some(PendingBlock {
                    stream: head.stream,
                    end_stream: head.flags & END_STREAM != 0,
                    priority,
                    block: fragment.to_vec(),
                });
            }
            // RFC 9113 §6.10: nothing may come between a header block's frames. The server
            // would refuse this too; refusing it here keeps the two compression contexts apart
            // from anything half-decoded.
            _ => return Err(invalid("a header block interrupted by another frame")),
        }
        if head.flags & END_HEADERS != 0 {
            let pending = self.pending.take().expect("a header block is pending");
            self.mend(pending)?;
        }
        Ok(())
    }

    /// Decodes a complete header block, mends its `:authority` and writes it out again as a
    /// HEADERS frame and as many CONTINUATION frames as the encoded block needs.
    fn mend(&mut self, pending: PendingBlock) -> io::Result<()> {
        let headers = self
            .decoder
            .decode(&pending.block)
            .map_err(|e| invalid(&format!("a header block HPACK cannot decode ({e:?})")))?;
        let block = self.encoder.encode(headers.iter().map(|(name, value)| {
            let value: &[u8] = if name == b":authority" && !is_authority(value) {
                debug!(
                    authority = %String::from_utf8_lossy(value),
                    "unix socket: an :authority that is no URI authority is read as localhost"
                );
                LOCALHOST
            } else {
                value
            };
            (name.as_slice(), value)
        }));
        let prefix = pending.priority.map_or(0, |p| p.len());
        let mut rest = block.as_slice();
        let mut first = true;
        loop {
            let room = if first { MAX_FRAME - prefix } else { MAX_FRAME };
            let (chunk, after) = rest.split_at(rest.len().min(room));
            rest = after;
            let mut flags = if rest.is_empty() { END_HEADERS } else { 0 };
            let (kind, length) = if first {
                if pending.end_stream {
                    flags |= END_STREAM;
                }
                if pending.priority.is_some() {
                    flags |= PRIORITY;
                }
                (HEADERS, prefix + chunk.len())
            } else {
                (CONTINUATION, chunk.len())
            };
            FrameHead {
                length,
                kind,
                flags,
                stream: pending.stream,
            }
            .write(&mut self.output);
            if first {
                if let Some(priority) = pending.priority {
                    self.output.extend_from_slice(&priority);
                }
            }
            self.output.extend_from_slice(chunk);
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }

    fn has_output(&self) -> bool {
        self.output_at < self.output.len()
    }

    /// Hands out what `output` holds; empties it once all is read.
    fn drain_output(&mut self, buf: &mut ReadBuf<'_>) {
        let ready = &self.output[self.output_at..];
        let n = ready.len().min(buf.remaining());
        buf.put_slice(&ready[..n]);
        self.output_at += n;
        if self.output_at == self.output.len() {
            self.output.clear();
            self.output_at = 0;
        }
    }
}

/// Would the HTTP/2 server accept this `:authority`?
fn is_authority(value: &[u8]) -> bool {
    Authority::try_from(value).is_ok()
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[derive(Debug, Clone, Copy)]
struct FrameHead {
    length: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(bytes: &[u8]) -> Self {
        Self {
            length: usize::from(bytes[0]) << 16
                | usize::from(bytes[1]) << 8
                | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }

    fn write(self, out: &mut Vec<u8>) {
        let length = u32::try_from(self.length).expect("frames are cut below 2^24 bytes");
        out.extend_from_slice(&length.to_be_bytes()[1..]);
        out.extend_from_slice(&[self.kind, self.flags]);
        out.extend_from_slice(&self.stream.to_be_bytes());
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MendAuthority<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.has_output() {
                this.drain_output(buf);
                return Poll::Ready(Ok(()));
            }
            match this.state {
                // A frame's payload goes straight into the server's buffer.
                State::Through(remaining) => {
                    let room = buf.remaining().min(remaining);
                    let mut view = ReadBuf::new(buf.initialize_unfilled_to(room));
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut view))?;
                    let n = view.filled().len();
                    buf.advance(n);
                    if n > 0 {
                        this.state = if n == remaining {
                            State::Frame
                        } else {
                            State::Through(remaining - n)
                        };
                    }
                    return Poll::Ready(Ok(()));
                }
                State::Raw => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Preface | State::Frame => {
                    let mut chunk = [0u8; 8192];
                    let mut read = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                    if read.filled().is_empty() {
                        // End of stream: whatever is left unparsed goes on, and the server
                        // decides what an incomplete frame means.
                        this.output.append(&mut this.input);
                        if !this.has_output() {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    this.input.extend_from_slice(read.filled());
                    this.parse()?;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MendAuthority<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
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

/// The policy identifies a unix-socket caller by its peer credentials: the mended connection
/// reports those of the socket underneath.
impl<S: Connected> Connected for MendAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// What grpcio 1.85 sends for `unix:///run/faultline/faultline.sock`.
    const SOCKET_PATH: &[u8] = b"run%2Ffaultline%2Ffaultline.sock";

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/grpc.health.v1.Health/Check"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameHead {
            length: payload.len(),
            kind,
            flags,
            stream,
        }
        .write(&mut out);
        out.extend_from_slice(payload);
        out
    }

    fn encode(encoder: &mut Encoder<'static>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    /// Everything the server would read from a client that sent `bytes`.
    async fn through(bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut mended = MendAuthority::new(bytes.as_slice());
        let mut out = Vec::new();
        mended.read_to_end(&mut out).await?;
        Ok(out)
    }

    /// Splits a client stream (after the preface) into frames: (head, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(FrameHead, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let head = FrameHead::parse(&bytes[..FRAME_HEADER]);
            out.push((
                head,
                bytes[FRAME_HEADER..FRAME_HEADER + head.length].to_vec(),
            ));
            bytes = &bytes[FRAME_HEADER + head.length..];
        }
        out
    }

    /// Decodes the header blocks the server would see, in order, with one decoder.
    fn blocks(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = Decoder::new();
        let mut block = Vec::new();
        let mut out = Vec::new();
        for (head, payload) in frames(bytes) {
            match head.kind {
                HEADERS => {
                    let skip = if head.flags & PRIORITY != 0 { 5 } else { 0 };
                    block = payload[skip..].to_vec();
                }
                CONTINUATION => block.extend_from_slice(&payload),
                _ => continue,
            }
            if head.flags & END_HEADERS != 0 {
                out.push(decoder.decode(&block).unwrap());
            }
        }
        out
    }

    fn authority(block: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &block.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut client = Encoder::new();
        let headers = request(SOCKET_PATH);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let block = encode(&mut client, &headers);
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &block));
        bytes.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0"));

        let out = through(bytes).await.unwrap();
        assert!(out.starts_with(PREFACE));
        let seen = blocks(&out[PREFACE.len()..]);
        assert_eq!(seen.len(), 1);
        assert_eq!(authority(&seen[0]), LOCALHOST);
        let others = |b: &[(Vec<u8>, Vec<u8>)]| {
            b.iter()
                .filter(|(n, _)| n != b":authority")
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(others(&seen[0]), others(&headers));
        let kinds: Vec<(u8, u8, u32)> = frames(&out[PREFACE.len()..])
            .iter()
            .map(|(h, _)| (h.kind, h.flags, h.stream))
            .collect();
        assert_eq!(
            kinds,
            [(0x4, 0, 0), (HEADERS, END_HEADERS, 1), (0x0, END_STREAM, 1)]
        );
        assert!(out.ends_with(&frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")));
    }

    /// A client whose bytes arrive a few at a time: frames and even frame headers split
    /// across reads come out the same as when they arrive at once.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let step = 1 + self.at % 7;
            let end = (self.at + step)
                .min(self.bytes.len())
                .min(self.at + buf.remaining());
            buf.put_slice(&self.bytes[self.at..end]);
            self.at = end;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn bytes_that_arrive_a_few_at_a_time_come_out_the_same() {
        let mut client = Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for stream in [1, 3] {
            let block = encode(&mut client, &request(SOCKET_PATH));
            bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            bytes.extend(frame(0x0, END_STREAM, stream, &[7; 300]));
        }
        let whole = through(bytes.clone()).await.unwrap();
        let mut trickled = Vec::new();
        MendAuthority::new(Trickle { bytes, at: 0 })
            .read_to_end(&mut trickled)
            .await
            .unwrap();
        assert_eq!(trickled, whole);
        assert_eq!(blocks(&whole[PREFACE.len()..]).len(), 2);
    }

    #[tokio::test]
    async fn a_valid_authority_is_kept_as_sent() {
        let mut client = Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &encode(&mut client, &request(b"agent.example:50051")),
        ));
        let out = through(bytes).await.unwrap();
        assert_eq!(
            authority(&blocks(&out[PREFACE.len()..])[0]),
            b"agent.example:50051"
        );
    }

    /// The client's encoder indexes the path on the first request and refers to it by index
    /// afterwards: the mender follows the client's dynamic table across requests.
    #[tokio::test]
    async fn an_indexed_authority_on_later_streams_is_mended_too() {
        let mut client = Encoder::new();
        let mut bytes = PREFACE.to_vec();
        for stream in [1, 3, 5] {
            let block = encode(&mut client, &request(SOCKET_PATH));
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        let out = through(bytes).await.unwrap();
        let seen = blocks(&out[PREFACE.len()..]);
        assert_eq!(seen.len(), 3);
        for block in &seen {
            assert_eq!(authority(block), LOCALHOST);
        }
    }

    #[tokio::test]
    async fn padding_priority_and_continuations_are_read_and_long_blocks_cut_to_frames() {
        let mut client = Encoder::new();
        let mut headers = request(SOCKET_PATH);
        // A metadata value longer than one frame: the block goes out as HEADERS + CONTINUATION.
        headers.push((b"x-trace".to_vec(), vec![b'a'; 40_000]));
        let block = encode(&mut client, &headers);
        let (first, rest) = block.split_at(100);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency on 0, weight 15
        payload.extend_from_slice(first);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 7, &payload));
        bytes.extend(frame(CONTINUATION, 0, 7, &rest[..20_000]));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 7, &rest[20_000..]));

        let out = through(bytes).await.unwrap();
        let sent = frames(&out[PREFACE.len()..]);
        assert!(sent.len() >= 3, "{} frames", sent.len());
        assert!(sent
            .iter()
            .all(|(h, _)| h.length <= MAX_FRAME && h.stream == 7));
        assert_eq!(sent[0].0.kind, HEADERS);
        assert_eq!(sent[0].0.flags, PRIORITY | END_STREAM);
        assert_eq!(&sent[0].1[..5], &[0x80, 0, 0, 0, 15]);
        assert_eq!(sent.last().unwrap().0.flags, END_HEADERS);
        let seen = blocks(&out[PREFACE.len()..]);
        assert_eq!(authority(&seen[0]), LOCALHOST);
        assert_eq!(seen[0].last().unwrap().1.len(), 40_000);
    }

    #[tokio::test]
    async fn an_interrupted_header_block_is_refused() {
        let mut client = Encoder::new();
        let block = encode(&mut client, &request(SOCKET_PATH));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, 0, 1, &block[..10]));
        bytes.extend(frame(0x0, 0, 1, b"data"));
        let error = through(bytes).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn what_is_not_http2_passes_unchanged() {
        let request = b"GET / HTTP/1.1\r\nHost: /run/faultline/faultline.sock\r\n\r\n".to_vec();
        assert_eq!(through(request.clone()).await.unwrap(), request);
    }
}
