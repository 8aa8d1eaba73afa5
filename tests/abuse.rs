//! Under abuse the server closes the abusive connection quickly, keeps its memory bounded and
//! keeps answering other clients (issue 11). Each scenario runs the real binary as a child
//! process with small limits, abuses it from loopback, reads its resident memory from
//! `/proc/<pid>/status` where memory is the point, and checks that a separate well-behaved
//! client still gets the right Check answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failed step should stop the test loudly.

mod abuse_support;

use std::time::{Duration, Instant};

use abuse_support::*;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// 1. Past `CHECKPOINT_GRPC_MAX_CONNECTIONS` a new connection is closed at once, whether it says
/// nothing or only the HTTP/2 preface; those inside the bound stay open. While the bound is full
/// a newcomer is turned away quickly (not left waiting); it is served as soon as a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_bound_are_closed_at_once() {
    let mut server = Checkpoint::start(&[("CHECKPOINT_GRPC_MAX_CONNECTIONS", "50")]).await;
    let mut watchers = JoinSet::new();
    for i in 0..200 {
        let mut socket = TcpStream::connect(server.grpc).await.expect("connect");
        if i % 2 == 1 {
            let _ = socket.write_all(&hello()).await;
        }
        watchers.spawn(closed_within(socket, Duration::from_secs(1)));
    }
    let (mut open, mut closed) = (Vec::new(), Vec::new());
    while let Some(watched) = watchers.join_next().await {
        match watched.expect("watcher") {
            (socket, None) => open.push(socket),
            (_, Some(after)) => closed.push(after),
        }
    }
    let slowest = closed.iter().max().copied().unwrap_or_default();
    eprintln!(
        "connections: {} open, {} closed by the server, the slowest after {slowest:?}",
        open.len(),
        closed.len()
    );
    assert_eq!(open.len(), 50, "exactly max_connections stay open");
    assert!(
        slowest < Duration::from_millis(500),
        "a connection past the bound is closed at once, not after {slowest:?}"
    );

    let started = Instant::now();
    let turned_away = good_client(server.grpc).await;
    let waited = started.elapsed();
    eprintln!("while full, a new client: {turned_away:?} after {waited:?}");
    assert!(turned_away.is_err(), "no slot, no service");
    assert!(
        waited < Duration::from_secs(1),
        "a client past the bound learns it at once, not after {waited:?}"
    );

    drop(open);
    let after = server.served_within(Duration::from_secs(2)).await;
    eprintln!("slots freed: served again after {after:?}");
}

/// 1. With `CHECKPOINT_GRPC_IDLE_TIMEOUT=1s`, connections without a call (silent, or HTTP/2 set
/// up and unused) are closed by the server after about a second, and their slots serve new
/// clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_their_slots_reused() {
    let mut server = Checkpoint::start(&[
        ("CHECKPOINT_GRPC_MAX_CONNECTIONS", "50"),
        ("CHECKPOINT_GRPC_IDLE_TIMEOUT", "1s"),
    ])
    .await;
    let mut watchers = JoinSet::new();
    for i in 0..50 {
        let mut socket = TcpStream::connect(server.grpc).await.expect("connect");
        if i % 2 == 1 {
            socket.write_all(&hello()).await.expect("preface");
        }
        watchers.spawn(closed_within(socket, Duration::from_secs(4)));
    }
    let extra = TcpStream::connect(server.grpc).await.expect("connect");
    let (_, refused) = closed_within(extra, Duration::from_millis(500)).await;
    assert!(
        refused.is_some(),
        "the bound is full: a 51st connection is closed at once"
    );

    let mut closed = Vec::new();
    while let Some(watched) = watchers.join_next().await {
        let (_, after) = watched.expect("watcher");
        closed.push(after.expect("an idle connection is closed by the server within 4s"));
    }
    let (first, last) = (closed.iter().min().unwrap(), closed.iter().max().unwrap());
    eprintln!("50 idle connections closed between {first:?} and {last:?}");
    assert!(
        *first >= Duration::from_millis(900),
        "closed for being idle, so not before the timeout: {first:?}"
    );
    assert!(
        *last < Duration::from_secs(3),
        "closed soon after the timeout: {last:?}"
    );
    let after = server.served_within(Duration::from_secs(1)).await;
    eprintln!("slots reused: served after {after:?}");
}

/// 2. Clients with a zero receive window that never read: one connection's 256 Checks stay stuck
/// (a 257th call waits for a stream slot), memory grows by a few MiB; seven more connections of
/// 256 calls, three in four of them reflection calls asking twice for the largest answer, keep
/// the server under 64 MiB over its baseline, because reflection calls in flight are bounded
/// (32) over every connection and the rest are refused at once. Others are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_that_never_read_hold_bounded_memory() {
    let mut server = Checkpoint::start(&[]).await;
    let baseline = server.baseline().await;

    let checks = never_reading(&server, 256, 1).await;
    assert_eq!(checks.stuck, (256, 0));
    assert_eq!(
        checks.send.current_max_send_streams(),
        256,
        "the server's stream limit"
    );
    let (mut more, _body) = checks
        .send
        .clone()
        .send_request(grpc_head(CHECK_PATH), true)
        .expect("queued");
    let answered = refused_with(&mut more, Duration::from_millis(500)).await;
    assert_eq!(answered, None, "256 streams open: a 257th waits for a slot");
    server.assert_memory_bounded(baseline, 24, "1 never-reading connection, 256 Checks");
    server.assert_served().await;

    let mut held = vec![checks];
    for _ in 0..7 {
        held.push(never_reading(&server, 256, 4).await);
    }
    let stuck_reflection: usize = held.iter().map(|c| c.stuck.1).sum();
    let stuck_checks: usize = held.iter().map(|c| c.stuck.0).sum();
    let refused: usize = held.iter().map(|c| c.refused).sum();
    eprintln!(
        "8 never-reading connections: {stuck_checks} Checks and {stuck_reflection} reflection calls stuck, {refused} reflection calls refused"
    );
    assert!(stuck_reflection <= 32, "{stuck_reflection}");
    server.assert_memory_bounded(baseline, 64, "8 never-reading connections of 256 calls");
    server.assert_served().await;
}

/// 3. Slow senders are held to `CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT` (8 MiB here): a
/// call takes the message it announces from the budget as its length prefix arrives, so two
/// 3 MiB messages stalled after 1 MiB hold 6 MiB and every other large one is refused with
/// RESOURCE_EXHAUSTED at once, as are 256 calls that send nothing but a prefix announcing 4 MiB.
/// Memory stays within the budget plus a margin; a small Check still fits and is served. Once
/// the budget is spent, every call is refused promptly (the budget is global), and served again
/// as soon as the slow senders go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_are_held_to_the_request_budget() {
    let mut server =
        Checkpoint::start(&[("CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT", "8388608")]).await;
    let baseline = server.baseline().await;

    let (mut send, _slow) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    let mut slow: Vec<_> = (0..16)
        .map(|_| stalled_sender(&mut send, 3 * MIB, MIB))
        .collect();
    let mut stalled = 0;
    for (response, _) in &mut slow {
        match refused_with(response, Duration::from_millis(500)).await {
            None => stalled += 1,
            Some(status) => assert_eq!(status, "8", "RESOURCE_EXHAUSTED"),
        }
    }
    eprintln!(
        "16 slow 3 MiB messages: {stalled} held, {} refused",
        16 - stalled
    );
    assert_eq!(
        stalled, 2,
        "two 3 MiB messages fit in 8 MiB, a third does not"
    );

    let (mut announce, _announcers) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    let mut announced = Vec::new();
    for _ in 0..256 {
        let ready = tokio::time::timeout(PATIENCE, announce.clone().ready()).await;
        announce = ready.expect("a stream slot").expect("ready");
        announced.push(stalled_sender(&mut announce, 4 * MIB, 5));
    }
    let mut refused = 0;
    for (response, _) in &mut announced {
        if refused_with(response, Duration::from_millis(500))
            .await
            .as_deref()
            == Some("8")
        {
            refused += 1;
        }
    }
    eprintln!("256 prefixes announcing 4 MiB: {refused} refused");
    assert_eq!(refused, 256, "2 MiB left: no 4 MiB message fits");
    server.assert_memory_bounded(baseline, 32, "slow senders holding 6 of 8 MiB");
    server.assert_served().await;

    // What is left, 2 MiB less the two prefixes held (10 bytes), taken by one more slow sender
    // (a message of that size less its own prefix): now nobody's call fits.
    let (mut last, _last) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    let mut rest = stalled_sender(&mut last, 2 * MIB - 15, 5);
    assert_eq!(
        refused_with(&mut rest.0, Duration::from_millis(300)).await,
        None
    );
    let started = Instant::now();
    let refused = good_client(server.grpc).await;
    eprintln!(
        "budget spent: the good client {refused:?} after {:?}",
        started.elapsed()
    );
    assert!(
        refused.is_err_and(|why| why.contains("too many request bytes")),
        "a spent budget refuses with RESOURCE_EXHAUSTED"
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    drop((slow, send, announced, announce, rest, last));
    let after = server.served_within(Duration::from_secs(2)).await;
    eprintln!("slow senders gone: served again after {after:?}");
    server.assert_memory_bounded(baseline, 32, "slow senders");
}

/// 3. A CheckRequest over `CHECKPOINT_GRPC_MAX_MESSAGE_SIZE` is RESOURCE_EXHAUSTED, refused by
/// its length prefix before any of it is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_resource_exhausted() {
    let mut server = Checkpoint::start(&[("CHECKPOINT_GRPC_MAX_MESSAGE_SIZE", "65536")]).await;
    let (mut send, _connection) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    let (response, mut body) = send
        .send_request(grpc_head(CHECK_PATH), false)
        .expect("send");
    let mut prefix = vec![0];
    prefix.extend_from_slice(&65537u32.to_be_bytes());
    body.send_data(prefix.into(), false).expect("data");
    let status = grpc_status(response).await;
    eprintln!("a 65537-byte CheckRequest: grpc-status {status:?}");
    assert_eq!(status.as_deref(), Ok("8"));
    server.assert_served().await;
}

/// 3. A long reflection stream holds one message's worth of the budget, not the sum of all it
/// ever sent: twelve 1 MiB requests on one stream under an 8 MiB budget are all answered, and
/// Checks are served while it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stream_holds_its_largest_message_not_all_it_sent() {
    let mut server =
        Checkpoint::start(&[("CHECKPOINT_GRPC_MAX_REQUEST_BYTES_IN_FLIGHT", "8388608")]).await;
    let (mut send, _connection) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    let (response, mut requests) = send
        .send_request(grpc_head(REFLECTION_PATH), false)
        .expect("send");
    let mut response = Some(response);
    let mut answers: Option<h2::RecvStream> = None;
    let mut received = 0;
    for i in 0..12 {
        // file_by_filename, padded to 1 MiB with an unknown field (15, bytes) that prost skips.
        let file = b"validate/validate.proto";
        let mut message = vec![0x1a, file.len() as u8];
        message.extend_from_slice(file);
        let pad = MIB - 5 - message.len() - 4;
        message.extend_from_slice(&[
            0x7a,
            (pad as u8) | 0x80,
            ((pad >> 7) as u8) | 0x80,
            (pad >> 14) as u8,
        ]);
        message.resize(MIB - 5, 0);
        requests
            .send_data(grpc_message(&message), false)
            .expect("data");
        if let Some(response) = response.take() {
            let head = tokio::time::timeout(PATIENCE, response)
                .await
                .expect("an answer")
                .expect("an answer, not a reset");
            assert!(
                head.headers().get("grpc-status").is_none(),
                "refused: {head:?}"
            );
            answers = Some(head.into_body());
        }
        let answers = answers.as_mut().expect("the answer stream");
        // Each answer is the same 43543 bytes (validate.proto, framed).
        while received < (i + 1) * 43_543 {
            match tokio::time::timeout(PATIENCE, answers.data()).await {
                Ok(Some(Ok(chunk))) => {
                    received += chunk.len();
                    let _ = answers.flow_control().release_capacity(chunk.len());
                }
                Ok(None) => {
                    let trailers = answers.trailers().await;
                    server.fail(&format!("the stream ended after {i} MiB: {trailers:?}"));
                }
                other => server.fail(&format!("request {i}: no answer: {other:?}")),
            }
        }
    }
    eprintln!("12 requests of 1 MiB on one stream: {received} bytes answered");
    server.assert_served().await;
    drop(requests);
}

/// 4. Streams opened and reset at once, thousands of them: the server answers GOAWAY
/// ENHANCE_YOUR_CALM and closes the connection within a second (h2's rapid-reset protection,
/// `http2_max_pending_accept_reset_streams`), whether the frames come in one burst written by
/// hand or from an `h2` client as fast as it goes; memory stays flat and others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_close_the_connection() {
    let mut server = Checkpoint::start(&[]).await;
    let baseline = server.baseline().await;

    let block = check_block();
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let stream = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_HEADERS, stream, &block));
        burst.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    let mut raw = Raw::connect(server.grpc).await;
    raw.send_within(&burst, Duration::from_secs(2)).await;
    let seen = raw.watch(Duration::from_secs(2)).await;
    eprintln!("5000 HEADERS+RST_STREAM by hand: {seen:?}");
    assert_eq!(seen.goaway, Some(ENHANCE_YOUR_CALM), "{seen:?}");
    assert!(
        seen.closed_after
            .is_some_and(|after| after < Duration::from_secs(1)),
        "closed within a second: {seen:?}"
    );

    let (send, connection) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    let started = Instant::now();
    let mut opened = 0;
    for _ in 0..5000 {
        let Ok(Ok(mut ready)) = tokio::time::timeout(PATIENCE, send.clone().ready()).await else {
            break;
        };
        let Ok((_, mut body)) = ready.send_request(grpc_head(CHECK_PATH), false) else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        opened += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(2), connection)
        .await
        .expect("the server ends the connection")
        .expect("connection task");
    let took = started.elapsed();
    eprintln!("h2 client: {opened} streams opened and reset; connection {ended:?} after {took:?}");
    let error = ended.expect_err("a connection error, not a clean end");
    // The GOAWAY, or, when the client was still writing as the server closed, a broken pipe.
    assert!(
        error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
            && error.is_go_away()
            && error.is_remote()
            || error.is_io(),
        "{error:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    server.assert_memory_bounded(baseline, 32, "rapid reset");
    server.assert_served().await;
}

/// How a flood ends.
#[derive(Debug)]
enum Ends {
    /// The server sends GOAWAY with this code and closes the connection.
    Closed(u32),
    /// Every stream is refused (RST_STREAM PROTOCOL_ERROR or REFUSED_STREAM), none answered.
    Refused(usize),
}

/// 5. Floods and malformed header blocks: each connection is closed (GOAWAY), or each of its
/// streams refused, within a second; memory stays flat; others are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_malformed_headers_are_cut_short() {
    let mut server = Checkpoint::start(&[]).await;
    let baseline = server.baseline().await;
    let check = check_block();

    let mut continuation = frame(HEADERS, 0, 1, &check);
    for _ in 0..100_000 {
        continuation.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    let mut empty_data = frame(HEADERS, END_HEADERS, 1, &check);
    for _ in 0..200_000 {
        empty_data.extend(frame(DATA, 0, 1, &[]));
    }
    let mut empty_blocks = Vec::new();
    for i in 0..3000u32 {
        empty_blocks.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &[]));
    }
    let mut empty_name = check.clone();
    literal(&mut empty_name, b"", b"x");
    let empty_name = frame(HEADERS, END_HEADERS | END_STREAM, 1, &empty_name);
    // A 4000-byte field enters the dynamic table once, then each one-byte reference to it
    // (index 62) decodes to 4 KB more: 16 KB frames decoding to about 48 MB each.
    let mut bombs = Vec::new();
    for i in 0..300u32 {
        let mut block = check.clone();
        if i == 0 {
            literal_indexed(&mut block, b"x-bomb", &[b'a'; 4000]);
        }
        while block.len() < 16_000 {
            indexed(&mut block, 62);
        }
        bombs.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, &block));
    }

    let floods = [
        (
            "100000 empty CONTINUATION frames",
            continuation,
            Ends::Closed(ENHANCE_YOUR_CALM),
        ),
        (
            "200000 empty DATA frames on a call",
            empty_data,
            Ends::Closed(ENHANCE_YOUR_CALM),
        ),
        (
            "3000 zero-length header blocks",
            empty_blocks,
            Ends::Refused(3000),
        ),
        (
            "a header with an empty name",
            empty_name,
            Ends::Closed(PROTOCOL_ERROR),
        ),
        ("an HPACK bomb", bombs, Ends::Closed(ENHANCE_YOUR_CALM)),
    ];
    for (name, bytes, ends) in floods {
        let mut raw = Raw::connect(server.grpc).await;
        let written = raw.send_within(&bytes, Duration::from_secs(2)).await;
        let seen = raw.watch(Duration::from_secs(1)).await;
        eprintln!(
            "{name}: {written} of {} bytes written; {seen:?}",
            bytes.len()
        );
        match ends {
            Ends::Closed(code) => {
                assert_eq!(seen.goaway, Some(code), "{name}: {seen:?}");
                assert!(
                    seen.closed_after.is_some(),
                    "{name}: closed within a second: {seen:?}"
                );
            }
            Ends::Refused(streams) => {
                let refused: usize = [PROTOCOL_ERROR, REFUSED_STREAM]
                    .iter()
                    .filter_map(|code| seen.resets.get(code))
                    .sum();
                assert_eq!(refused, streams, "{name}: {seen:?}");
                assert_eq!(
                    seen.resets.values().sum::<usize>(),
                    streams,
                    "{name}: {seen:?}"
                );
                assert_eq!(seen.headers, 0, "{name}: nothing answered: {seen:?}");
            }
        }
        server.assert_served().await;
    }
    server.assert_memory_bounded(baseline, 16, "floods");
}

/// 6. PING and SETTINGS floods from a client that never reads the ACKs: h2 writes each ACK
/// before it reads the next frame, so the server stops reading once its socket is full (memory
/// stays flat), and the keepalive ping that goes unanswered closes the connection after
/// `CHECKPOINT_GRPC_KEEPALIVE_INTERVAL` + `_TIMEOUT`. Others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_are_bounded_and_closed() {
    let mut server = Checkpoint::start(&[
        ("CHECKPOINT_GRPC_KEEPALIVE_INTERVAL", "1s"),
        ("CHECKPOINT_GRPC_KEEPALIVE_TIMEOUT", "1s"),
    ])
    .await;
    let baseline = server.baseline().await;
    let floods = [
        ("PING", frame(PING, 0, 0, &[7; 8])),
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])),
    ];
    for (name, one) in floods {
        let flood = one.repeat(1_000_000);
        let mut raw = Raw::connect(server.grpc).await;
        let started = Instant::now();
        let written = raw.send_within(&flood, Duration::from_secs(1)).await;
        eprintln!(
            "{name} flood: {written} of {} bytes written in {:?}",
            flood.len(),
            started.elapsed()
        );
        server.assert_memory_bounded(baseline, 16, &format!("{name} flood, ACKs unread"));
        server.assert_served().await;
        let seen = raw.watch(Duration::from_secs(5)).await;
        let closed = started.elapsed();
        eprintln!("{name} flood: {seen:?}, closed {closed:?} after the flood began");
        assert!(seen.closed_after.is_some(), "{name}: {seen:?}");
        assert!(
            closed < Duration::from_secs(4),
            "{name}: closed after {closed:?}"
        );
    }
    server.assert_memory_bounded(baseline, 16, "PING and SETTINGS floods");
}

/// 7. A call whose header list is over `CHECKPOINT_GRPC_MAX_HEADER_LIST_SIZE` gets a gRPC answer,
/// RESOURCE_EXHAUSTED (not a bare HTTP 431); HTTP/1.1 on the port gets a 505 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_lists_and_http1_get_answers_in_words() {
    let mut server = Checkpoint::start(&[("CHECKPOINT_GRPC_MAX_HEADER_LIST_SIZE", "4096")]).await;
    let (mut send, _connection) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    let mut head = grpc_head(CHECK_PATH);
    head.headers_mut()
        .insert("x-padding", "a".repeat(5000).parse().expect("value"));
    let (response, mut body) = send.send_request(head, false).expect("send");
    body.send_data(public_check_message(), true).expect("data");
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("an answer")
        .expect("an answer, not a reset");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("text").to_owned())
    };
    assert_eq!(response.status(), 200, "{response:?}");
    assert_eq!(header("content-type").as_deref(), Some("application/grpc"));
    assert_eq!(header("grpc-status").as_deref(), Some("8"), "{response:?}");
    assert!(
        header("grpc-message").is_some_and(|m| m.contains("more%20than%204096")),
        "{response:?}"
    );
    server.assert_served().await;

    let answer = http1(
        server.grpc,
        &format!(
            "POST {CHECK_PATH} HTTP/1.1\r\nhost: checkpoint\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 505 "), "{answer}");
    assert!(
        answer.contains("this port serves gRPC over HTTP/2 only"),
        "{answer}"
    );
    server.assert_served().await;
}

/// 8. A thousand health `Watch` streams over four connections: memory stays bounded, Checks are
/// served, and the idle timeout (1 s here) leaves alone a connection with a Watch in flight (a
/// call counts until its response body ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_health_watches_stay_open_and_cheap() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let mut server = Checkpoint::start(&[("CHECKPOINT_GRPC_IDLE_TIMEOUT", "1s")]).await;
    let baseline = server.baseline().await;
    let started = Instant::now();
    let mut watches = JoinSet::new();
    for _ in 0..4 {
        let channel = server.channel().await;
        for _ in 0..250 {
            let mut client = HealthClient::new(channel.clone());
            watches.spawn(async move {
                let request = HealthCheckRequest {
                    service: String::new(),
                };
                let mut stream = client.watch(request).await.expect("watch").into_inner();
                let first = stream.message().await.expect("a status").expect("a status");
                (first.status, stream)
            });
        }
    }
    let mut streams = Vec::new();
    while let Some(watch) = watches.join_next().await {
        let (status, stream) = watch.expect("watch task");
        assert_eq!(status, 1, "SERVING");
        streams.push(stream);
    }
    eprintln!(
        "{} Watch streams open after {:?}",
        streams.len(),
        started.elapsed()
    );
    server.assert_memory_bounded(baseline, 48, "1000 Watch streams");
    server.assert_served().await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut open = 0;
    for stream in &mut streams {
        // Polled once: a stream whose connection was closed would have its error ready.
        if tokio::time::timeout(Duration::ZERO, stream.message())
            .await
            .is_err()
        {
            open += 1;
        }
    }
    eprintln!("after 2.5s (idle timeout 1s): {open} of 1000 Watch streams still open");
    assert_eq!(
        open, 1000,
        "a connection with a Watch in flight is not idle"
    );
    server.assert_served().await;
    server.assert_memory_bounded(baseline, 48, "1000 Watch streams");
}

/// 9. With `CHECKPOINT_GRPC_MAX_CONNECTION_AGE=1s` and `_GRACE=1s`: a connection gets GOAWAY
/// after about a second (new streams refused), a Check in flight then is still answered and the
/// connection closes when it is done; a call still in flight when the grace ends is cut off with
/// its connection; a tonic channel reconnects on its own and keeps working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_connections_go_away_gracefully() {
    let server = Checkpoint::start(&[
        ("CHECKPOINT_GRPC_MAX_CONNECTION_AGE", "1s"),
        ("CHECKPOINT_GRPC_MAX_CONNECTION_AGE_GRACE", "1s"),
    ])
    .await;
    let started = Instant::now();
    let (send, connection) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ready = send.clone().ready().await.expect("ready");
    let (in_flight, mut body) = ready
        .send_request(grpc_head(CHECK_PATH), false)
        .expect("send");
    // The whole message but not the end of the stream: the call stays in flight.
    body.send_data(public_check_message(), false).expect("data");
    let goaway = loop {
        match probe(&send).await {
            Ok(status) if status == "0" && started.elapsed() < Duration::from_secs(2) => {}
            other => break (started.elapsed(), other),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("new streams refused after {:?}: {:?}", goaway.0, goaway.1);
    assert!(goaway.1.is_err(), "refused, not answered: {goaway:?}");
    assert!(
        goaway.0 > Duration::from_millis(900) && goaway.0 < Duration::from_millis(1500),
        "GOAWAY at the connection's age: {goaway:?}"
    );
    body.send_data(Bytes::new(), true).expect("end of stream");
    let status = grpc_status(in_flight).await;
    eprintln!(
        "the Check in flight at GOAWAY: {status:?} at {:?}",
        started.elapsed()
    );
    assert_eq!(status.as_deref(), Ok("0"), "answered within the grace");
    let ended = tokio::time::timeout(Duration::from_secs(1), connection)
        .await
        .expect("the connection closes once its last call is done")
        .expect("connection task");
    let closed = started.elapsed();
    eprintln!("connection closed at {closed:?}: {ended:?}");
    assert!(
        closed < Duration::from_secs(2),
        "before the grace ends: {closed:?}"
    );

    // A call never finished is cut off with its connection when the grace ends, while a tonic
    // channel goes on through several connection ages.
    let cut_off = async {
        let started = Instant::now();
        let (mut send, connection) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
        let (response, _body) = stalled_sender(&mut send, 100, 50);
        let ended = tokio::time::timeout(Duration::from_secs(4), connection).await;
        let status = grpc_status(response).await;
        (started.elapsed(), ended, status)
    };
    let channel = server.channel().await;
    // tonic's client can lose a call it hands to a connection that has just received GOAWAY (it
    // does not retry it on the new connection): CANCELLED "connection closed", or, when the call
    // opened its stream after the server's first GOAWAY, h2's refusal of a stream past the last
    // one the server took (`GoAway(.., NO_ERROR, Remote)`; the server never saw it). Allowed, at
    // most once per connection age, as long as the very next call is served.
    let lost_at_goaway =
        |why: &str| why.contains("connection closed") || why.contains("NO_ERROR, Remote)");
    let keeps_working = async {
        let started = Instant::now();
        let (mut rounds, mut lost, mut just_lost) = (0, Vec::new(), false);
        while started.elapsed() < Duration::from_millis(3500) {
            match good_checks(channel.clone()).await {
                Ok(()) => just_lost = false,
                Err(why) if lost_at_goaway(&why) && !just_lost => {
                    lost.push(started.elapsed());
                    just_lost = true;
                }
                Err(why) => {
                    return Err(format!("round {rounds} at {:?}: {why}", started.elapsed()));
                }
            }
            rounds += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((rounds, lost))
    };
    let ((after, ended, status), rounds) = tokio::join!(cut_off, keeps_working);
    eprintln!(
        "a call never finished: connection ended {ended:?} after {after:?}, the call: {status:?}"
    );
    assert!(ended.is_ok(), "the connection ends");
    assert!(status.is_err(), "the call is cut off: {status:?}");
    assert!(
        after > Duration::from_millis(1800) && after < Duration::from_millis(2600),
        "at age + grace: {after:?}"
    );
    let (rounds, lost) = rounds.unwrap_or_else(|why| server.fail(&why));
    eprintln!("one tonic channel over 3.5s: {rounds} rounds of Checks, lost at GOAWAY: {lost:?}");
    assert!(
        lost.len() <= 4,
        "at most one lost call per connection age: {lost:?}"
    );
}

/// 10. `CHECKPOINT_GRPC_MAX_CALLS_IN_FLIGHT` bounds calls over every connection: with 64, a
/// never-reading client's first 64 Checks are held (their answers cannot be sent), every further
/// call on any connection gets RESOURCE_EXHAUSTED at once instead of piling up, and once that
/// client goes, its slots are free and the good client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_are_bounded_over_every_connection() {
    let mut server = Checkpoint::start(&[("CHECKPOINT_GRPC_MAX_CALLS_IN_FLIGHT", "64")]).await;
    let baseline = server.baseline().await;
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let (send, connection) = h2_connect(server.grpc, &builder).await;
    let mut held = Vec::new();
    let (mut stuck, mut refused) = (0, 0);
    for _ in 0..100 {
        let mut ready = tokio::time::timeout(PATIENCE, send.clone().ready())
            .await
            .expect("a stream slot")
            .expect("ready");
        let (mut response, mut body) = ready
            .send_request(grpc_head(CHECK_PATH), false)
            .expect("send");
        let _ = body.send_data(public_check_message(), true);
        match refused_with(&mut response, Duration::from_millis(500))
            .await
            .as_deref()
        {
            None | Some("none") => stuck += 1,
            Some("8") => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
        held.push((response, body));
    }
    assert_eq!((stuck, refused), (64, 36), "64 held, the rest refused");
    // Another connection is refused too: the bound is the server's, not the connection's.
    let (other, _other_connection) = h2_connect(server.grpc, &h2::client::Builder::new()).await;
    assert_eq!(probe(&other).await.as_deref(), Ok("8"));
    server.assert_memory_bounded(baseline, 16, "64 calls held by a never-reading client");

    drop(held);
    drop(send);
    connection.abort();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match probe(&other).await.as_deref() {
            Ok("0") => break,
            answer if tokio::time::Instant::now() > deadline => {
                panic!("slots never freed: {answer:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    server.assert_served().await;
}
