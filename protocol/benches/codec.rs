//! Framing throughput: backend result frames scanned by header (the relay's hot path) and
//! frontend messages decoded.
use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pgsplit_protocol::backend::{encode_data_row, encode_ready, encode_row_description};
use pgsplit_protocol::framing::{decode_frame, peek_header, Limits};
use pgsplit_protocol::frontend::{encode_parse, encode_query, encode_sync};
use pgsplit_protocol::{FrontendMessage, TxStatus};

fn backend_stream(rows: usize) -> BytesMut {
    let mut b = BytesMut::new();
    encode_row_description(&mut b, &["aid", "abalance"]);
    for i in 0..rows {
        let v = i.to_string();
        encode_data_row(&mut b, &[Some(&v), Some("0")]);
    }
    pgsplit_protocol::backend::encode_command_complete(&mut b, "SELECT 1000");
    encode_ready(&mut b, TxStatus::Idle);
    b
}

fn bench(c: &mut Criterion) {
    let stream = backend_stream(1000);
    let frames = 1000 + 3;
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(frames as u64));
    g.bench_function("scan_backend_frames", |b| {
        b.iter(|| {
            let mut at = 0;
            let mut n = 0;
            while let Ok(Some(h)) = peek_header(&stream[at..], |_| 1 << 30) {
                at += h.total;
                n += 1;
            }
            black_box(n)
        })
    });
    let mut front = BytesMut::new();
    for _ in 0..1000 {
        encode_query(&mut front, "SELECT abalance FROM pgbench_accounts WHERE aid = 1");
        encode_parse(&mut front, "", "SELECT $1::int", &[]);
        encode_sync(&mut front);
    }
    let limits = Limits::default();
    g.throughput(Throughput::Elements(3000));
    g.bench_function("decode_frontend_messages", |b| {
        b.iter(|| {
            let mut buf = front.clone();
            let mut n = 0;
            while let Ok(Some(f)) = decode_frame(&mut buf, |t| limits.frontend_cap(t)) {
                black_box(FrontendMessage::decode(f.tag, &f.body).ok());
                n += 1;
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
