//! TLS between clients and pgsplit: the handshake, `require_tls`, and large results.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use pgsplit_protocol::framing::decode_frame;
use pgsplit_protocol::StartupPacket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// A self-signed certificate and key in a fresh directory.
fn make_cert() -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(unique("pgsplit-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl made a certificate");
    (dir, cert, key)
}

/// SSLRequest gets `S` and a real TLS session when a certificate is configured; with
/// require_tls a plain client is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_require_tls() {
    let (dir, cert, key) = make_cert();
    let mut cfg = config();
    cfg.server.tls_cert = cert.display().to_string();
    cfg.server.tls_key = key.display().to_string();
    cfg.server.require_tls = true;
    let p = Proxy::start(cfg).await;
    let port = p.port();
    let url = format!("postgresql://app:app@127.0.0.1:{port}/app?sslmode=require");
    let out = Command::new("psql").args(["-X", "-Atc", "SELECT 'tls ok'", &url]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls ok");
    // A result far larger than the socket buffers arrives whole over TLS.
    let big = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            Command::new("timeout")
                .args(["60", "psql", "-X", "-Atc", "SELECT repeat('x', 1000) FROM generate_series(1, 20000)", &url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(big.status.success(), "{}", String::from_utf8_lossy(&big.stderr));
    assert_eq!(big.stdout.len(), 20_000 * 1001);
    let url = format!("postgresql://app:app@127.0.0.1:{port}/app?sslmode=disable");
    let out = Command::new("psql").args(["-X", "-Atc", "SELECT 1", &url]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSL connection is required"));
    p.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Accepts the test's self-signed certificate: this test is about the data path, not trust.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that reads a large result slowly over TLS gets all of it, through full sockets and
/// pgsplit's read pauses. (A TLS stream can also take the last bytes of a result and hold them
/// as records the full socket did not accept; the session flushes them when the socket drains.
/// That moment depends on socket buffer sizes, and this test does not force it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_tls_reader_gets_the_whole_result() {
    let (dir, cert, key) = make_cert();
    let mut cfg = config();
    cfg.server.tls_cert = cert.display().to_string();
    cfg.server.tls_key = key.display().to_string();
    cfg.auth.method = "trust".into();
    let p = Proxy::start(cfg).await;

    let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut out = BytesMut::new();
    StartupPacket::SslRequest.encode(&mut out);
    tcp.write_all(&out).await.unwrap();
    assert_eq!(tcp.read_u8().await.unwrap(), b'S');
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config));
    let mut tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();

    let mut out = BytesMut::new();
    StartupPacket::Startup { params: vec![("user".into(), "app".into()), ("database".into(), "app".into())] }
        .encode(&mut out);
    tls.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    // frames until ReadyForQuery; returns how many DataRows came
    async fn until_ready<S: AsyncReadExt + Unpin>(s: &mut S, buf: &mut BytesMut, pace: Option<Duration>) -> usize {
        let mut rows = 0;
        loop {
            while let Some(f) = decode_frame(buf, |_| 1 << 20).unwrap() {
                match f.tag {
                    b'D' => rows += 1,
                    b'E' => panic!("error from pgsplit: {:?}", f.body),
                    b'Z' => return rows,
                    _ => {}
                }
            }
            let mut chunk = [0u8; 16 << 10];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "pgsplit closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(d) = pace {
                tokio::time::sleep(d).await;
            }
        }
    }
    until_ready(&mut tls, &mut buf, None).await;

    let mut out = BytesMut::new();
    pgsplit_protocol::frontend::encode_query(&mut out, "SELECT repeat('x', 1000) FROM generate_series(1, 20000)");
    tls.write_all(&out).await.unwrap();
    // let the sockets fill, then read slowly, so that pgsplit's writes keep meeting a full socket
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = tokio::time::timeout(
        Duration::from_secs(60),
        until_ready(&mut tls, &mut buf, Some(Duration::from_micros(200))),
    )
    .await
    .expect("the whole result arrives");
    assert_eq!(rows, 20_000);
    p.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
