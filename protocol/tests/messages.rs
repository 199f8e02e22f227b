//! Round trips for every message, property tests over random input, and replayed captures.

use bytes::{Bytes, BytesMut};
use pgsplit_protocol::backend::{Authentication, CopyResponse};
use pgsplit_protocol::error::ErrorFields;
use pgsplit_protocol::framing::{decode_frame, Limits};
use pgsplit_protocol::frontend::{AuthExpect, Bind, FunctionCall, Target};
use pgsplit_protocol::{BackendMessage, ErrorResponse, FrontendMessage, SqlState, StartupPacket, TxStatus};
use proptest::prelude::*;

fn frontend_round_trip(m: FrontendMessage) {
    let mut buf = BytesMut::new();
    m.encode(&mut buf);
    let limits = Limits::default();
    let f = decode_frame(&mut buf, |t| limits.frontend_cap(t)).unwrap().unwrap();
    assert!(buf.is_empty());
    let decoded = match &m {
        FrontendMessage::PasswordMessage { .. } => FrontendMessage::decode_auth(&f.body, AuthExpect::Password),
        FrontendMessage::SaslInitialResponse { .. } => FrontendMessage::decode_auth(&f.body, AuthExpect::SaslInitial),
        FrontendMessage::SaslResponse { .. } => FrontendMessage::decode_auth(&f.body, AuthExpect::SaslContinue),
        _ => FrontendMessage::decode(f.tag, &f.body),
    }
    .unwrap();
    assert_eq!(decoded, m);
}

fn backend_round_trip(m: BackendMessage) {
    let mut buf = BytesMut::new();
    m.encode(&mut buf);
    let f = decode_frame(&mut buf, |_| usize::MAX).unwrap().unwrap();
    assert_eq!(BackendMessage::decode(f.tag, &f.body).unwrap(), m);
}

#[test]
fn every_frontend_message_round_trips() {
    let b = |s: &'static [u8]| Bytes::from_static(s);
    for m in [
        FrontendMessage::Query { sql: "SELECT 1; SELECT 2".into() },
        FrontendMessage::Parse { name: "s1".into(), sql: "SELECT $1::int".into(), param_types: vec![23, 0] },
        FrontendMessage::Bind(Bind {
            portal: "p".into(),
            statement: "s1".into(),
            param_formats: vec![0, 1],
            params: vec![Some(b(b"42")), None, Some(b(b""))],
            result_formats: vec![1],
        }),
        FrontendMessage::Describe { kind: Target::Statement, name: "s1".into() },
        FrontendMessage::Describe { kind: Target::Portal, name: "".into() },
        FrontendMessage::Execute { portal: "".into(), max_rows: 100 },
        FrontendMessage::Close { kind: Target::Portal, name: "p".into() },
        FrontendMessage::Close { kind: Target::Statement, name: "s1".into() },
        FrontendMessage::Sync,
        FrontendMessage::Flush,
        FrontendMessage::CopyData(b(b"1\tone\n")),
        FrontendMessage::CopyDone,
        FrontendMessage::CopyFail { message: "client gave up".into() },
        FrontendMessage::FunctionCall(FunctionCall {
            oid: 1598,
            arg_formats: vec![1],
            args: vec![Some(b(b"\x00\x00\x00\x01")), None],
            result_format: 1,
        }),
        FrontendMessage::Terminate,
        FrontendMessage::AuthData(b(b"opaque")),
        FrontendMessage::PasswordMessage { password: "md5abcdef".into() },
        FrontendMessage::SaslInitialResponse { mechanism: "SCRAM-SHA-256".into(), data: Some(b(b"n,,n=,r=abc")) },
        FrontendMessage::SaslInitialResponse { mechanism: "SCRAM-SHA-256".into(), data: None },
        FrontendMessage::SaslResponse { data: b(b"c=biws,r=abc,p=xyz") },
    ] {
        frontend_round_trip(m);
    }
}

#[test]
fn every_backend_message_round_trips() {
    let b = |s: &'static [u8]| Bytes::from_static(s);
    let fields = ErrorResponse::error(SqlState::INVALID_PASSWORD, "password authentication failed").fields();
    for m in [
        BackendMessage::Authentication(Authentication::Ok),
        BackendMessage::Authentication(Authentication::CleartextPassword),
        BackendMessage::Authentication(Authentication::Md5Password { salt: [1, 2, 3, 4] }),
        BackendMessage::Authentication(Authentication::Sasl { mechanisms: vec!["SCRAM-SHA-256".into()] }),
        BackendMessage::Authentication(Authentication::SaslContinue { data: b(b"r=abc,s=c2FsdA==,i=4096") }),
        BackendMessage::Authentication(Authentication::SaslFinal { data: b(b"v=xyz") }),
        BackendMessage::Authentication(Authentication::Other { code: 7, data: b(b"") }),
        BackendMessage::ParameterStatus { name: "TimeZone".into(), value: "UTC".into() },
        BackendMessage::BackendKeyData { pid: 1234, secret: -99 },
        BackendMessage::ReadyForQuery(TxStatus::Idle),
        BackendMessage::ReadyForQuery(TxStatus::InTransaction),
        BackendMessage::ReadyForQuery(TxStatus::Failed),
        BackendMessage::ErrorResponse(fields.clone()),
        BackendMessage::NoticeResponse(fields),
        BackendMessage::CommandComplete { tag: "INSERT 0 1".into() },
        BackendMessage::CopyInResponse(CopyResponse { format: 0, column_formats: vec![0, 0] }),
        BackendMessage::CopyOutResponse(CopyResponse { format: 1, column_formats: vec![1] }),
        BackendMessage::CopyBothResponse(CopyResponse { format: 0, column_formats: vec![] }),
        BackendMessage::NotificationResponse { pid: 7, channel: "jobs".into(), payload: "42".into() },
        BackendMessage::ParseComplete,
        BackendMessage::BindComplete,
        BackendMessage::CloseComplete,
        BackendMessage::NoData,
        BackendMessage::EmptyQueryResponse,
        BackendMessage::PortalSuspended,
        BackendMessage::CopyDone,
        BackendMessage::Raw { tag: b'D', body: b(b"\x00\x01\x00\x00\x00\x011") },
        BackendMessage::Raw { tag: b'T', body: b(b"\x00\x00") },
    ] {
        backend_round_trip(m);
    }
}

#[test]
fn error_response_builder_carries_sqlstate() {
    let e = ErrorResponse::fatal(SqlState::TOO_MANY_CONNECTIONS, "too many clients").with_hint("raise max_clients");
    let mut buf = e.to_bytes();
    let f = decode_frame(&mut buf, |_| usize::MAX).unwrap().unwrap();
    assert_eq!(f.tag, b'E');
    let fields = ErrorFields::decode(&f.body).unwrap();
    assert_eq!(fields.code(), "53300");
    assert_eq!(fields.severity(), "FATAL");
    assert_eq!(fields.message(), "too many clients");
    assert_eq!(fields.get(b'H'), Some("raise max_clients"));
}

/// The first bytes psql 15 sends (byte for byte as psql 15 sends them): SSLRequest, then a StartupMessage.
#[test]
fn replayed_psql_startup() {
    let mut wire = BytesMut::from(&b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..]);
    assert_eq!(StartupPacket::decode(&mut wire, 10_000).unwrap(), Some(StartupPacket::SslRequest));
    let startup: &[u8] = b"\x00\x00\x00\x4a\x00\x03\x00\x00user\x00app\x00database\x00app\x00application_name\x00psql\x00client_encoding\x00UTF8\x00\x00";
    let mut wire = BytesMut::from(startup);
    let p = StartupPacket::decode(&mut wire, 10_000).unwrap().unwrap();
    assert_eq!(p.param("user"), Some("app"));
    assert_eq!(p.param("application_name"), Some("psql"));
    assert_eq!(p.param("client_encoding"), Some("UTF8"));
}

/// pgbench -M extended sends Parse/Bind/Describe/Execute/Sync in one write.
#[test]
fn replayed_extended_batch() {
    let mut wire = BytesMut::new();
    for m in [
        FrontendMessage::Parse {
            name: "".into(),
            sql: "SELECT abalance FROM pgbench_accounts WHERE aid = $1".into(),
            param_types: vec![],
        },
        FrontendMessage::Bind(Bind {
            portal: "".into(),
            statement: "".into(),
            param_formats: vec![],
            params: vec![Some(Bytes::from_static(b"123"))],
            result_formats: vec![],
        }),
        FrontendMessage::Describe { kind: Target::Portal, name: "".into() },
        FrontendMessage::Execute { portal: "".into(), max_rows: 0 },
        FrontendMessage::Sync,
    ] {
        m.encode(&mut wire);
    }
    let tags: Vec<u8> = std::iter::from_fn(|| decode_frame(&mut wire, |_| 1 << 20).unwrap().map(|f| f.tag)).collect();
    assert_eq!(tags, b"PBDES");
}

#[test]
fn parse_statement_reads_name_and_text() {
    let mut out = BytesMut::new();
    pgsplit_protocol::frontend::encode_parse(&mut out, "s1", "SELECT $1::int", &[23]);
    let body = &out[5..];
    assert_eq!(pgsplit_protocol::frontend::parse_statement(body).unwrap(), ("s1", "SELECT $1::int"));
    assert!(pgsplit_protocol::frontend::parse_statement(b"s1\0SELECT").is_err());
    match FrontendMessage::decode(b'P', body).unwrap() {
        FrontendMessage::Parse { name, sql, .. } => assert_eq!((name.as_str(), sql.as_str()), ("s1", "SELECT $1::int")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parse_repeats_compares_text_and_types() {
    use pgsplit_protocol::frontend::parse_repeats;
    let mut out = BytesMut::new();
    pgsplit_protocol::frontend::encode_parse(&mut out, "", "SELECT $1::int", &[23]);
    let body = &out[5..];
    assert!(parse_repeats(body, "SELECT $1::int", &[23]).unwrap());
    // another text, a prefix of it, a longer one, other types, fewer types
    assert!(!parse_repeats(body, "SELECT $1::int8", &[23]).unwrap());
    assert!(!parse_repeats(body, "SELECT $1::in", &[23]).unwrap());
    assert!(!parse_repeats(body, "SELECT $1::int", &[20]).unwrap());
    assert!(!parse_repeats(body, "SELECT $1::int", &[]).unwrap());
    // a body cut short is an error, not a match
    assert!(parse_repeats(&body[..body.len() - 2], "SELECT $1::int", &[23]).is_err());
    assert!(parse_repeats(b"\0SELECT", "SELECT", &[]).is_err());
}

proptest! {
    #[test]
    fn random_frontend_bytes_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = FrontendMessage::decode(tag, &body);
        let _ = FrontendMessage::decode_auth(&body, AuthExpect::SaslInitial);
        let _ = pgsplit_protocol::frontend::bind_statement(&body);
        let _ = pgsplit_protocol::frontend::parse_statement(&body);
        let _ = pgsplit_protocol::frontend::parse_repeats(&body, "SELECT 1", &[23]);
    }

    #[test]
    fn random_backend_bytes_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = BackendMessage::decode(tag, &body);
    }

    #[test]
    fn random_streams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&data[..]);
        let _ = StartupPacket::decode(&mut buf, 10_000);
        let mut buf = BytesMut::from(&data[..]);
        let limits = Limits::default();
        while let Ok(Some(f)) = decode_frame(&mut buf, |t| limits.frontend_cap(t)) {
            let _ = FrontendMessage::decode(f.tag, &f.body);
        }
    }

    #[test]
    fn scram_server_never_panics(a in proptest::collection::vec(any::<u8>(), 0..128), b in proptest::collection::vec(any::<u8>(), 0..128)) {
        use pgsplit_protocol::auth::{ScramServer, ScramVerifier};
        let v = ScramVerifier::from_password("pw", b"salt", 1);
        let mut s = ScramServer::new(v, "nonce".into());
        let _ = s.client_first(&a);
        let _ = s.client_final(&b);
    }

    #[test]
    fn query_and_parse_round_trip(sql in "[^\u{0}]{0,64}", name in "[a-z0-9_]{0,12}", types in proptest::collection::vec(any::<u32>(), 0..4)) {
        frontend_round_trip(FrontendMessage::Query { sql: sql.clone() });
        frontend_round_trip(FrontendMessage::Parse { name, sql, param_types: types });
    }
}
