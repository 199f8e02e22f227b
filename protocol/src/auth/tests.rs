use super::*;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

/// A real exchange: postgres-protocol's client (as tokio-postgres and sqlx-style clients use)
/// against our server, then our client against our server with recovered keys.
#[test]
fn postgres_protocol_client_against_our_server() {
    let verifier = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"s3cret")).unwrap();
    let mut client = ScramSha256::new(b"s3cret", ChannelBinding::unsupported());
    let mut server = ScramServer::new(verifier.clone(), random_nonce());
    let first = server.client_first(client.message()).unwrap();
    client.update(first.as_bytes()).unwrap();
    let outcome = server.client_final(client.message()).unwrap();
    client.finish(outcome.server_final.as_bytes()).unwrap();

    // The recovered ClientKey logs in against a server holding the same verifier.
    let keys = ScramCredential::Keys {
        client_key: outcome.client_key,
        server_key: verifier.server_key,
        salt: verifier.salt.clone(),
        iterations: verifier.iterations,
    };
    let mut ours = ScramClient::new(keys, random_nonce());
    let mut server2 = ScramServer::new(verifier, random_nonce());
    let sf = server2.client_first(ours.client_first().as_bytes()).unwrap();
    let cf = ours.server_first(sf.as_bytes()).unwrap();
    let out2 = server2.client_final(cf.as_bytes()).unwrap();
    ours.server_final(out2.server_final.as_bytes()).unwrap();
}

#[test]
fn wrong_password_is_rejected() {
    let verifier = ScramVerifier::generate("right");
    let mut client = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
    let mut server = ScramServer::new(verifier, random_nonce());
    let first = server.client_first(client.message()).unwrap();
    client.update(first.as_bytes()).unwrap();
    assert_eq!(server.client_final(client.message()).unwrap_err(), AuthError::WrongPassword);
}

/// RFC 7677 section 3 test vector, replayed byte for byte with the nonces injected.
#[test]
fn rfc7677_replay() {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    let verifier = ScramVerifier::from_password("pencil", &salt, 4096);
    let mut client = ScramClient::new(ScramCredential::Password("pencil".into()), "rOprNGfwEbeRWgbNEkqO".into());
    // PostgreSQL clients send an empty user name; the RFC uses "user". Replay with ours.
    assert_eq!(client.client_first(), "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
    let mut server = ScramServer::new(verifier.clone(), "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into());
    let sf = server.client_first(client.client_first().as_bytes()).unwrap();
    assert_eq!(sf, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
    let cf = client.server_first(sf.as_bytes()).unwrap();
    assert!(cf.starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="));
    let out = server.client_final(cf.as_bytes()).unwrap();
    client.server_final(out.server_final.as_bytes()).unwrap();
    // With the RFC's own user name the proof is the published one.
    let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    let salted = hi(b"pencil", &salt, 4096);
    let client_key = hmac(&salted, b"Client Key");
    let proof = xor(&client_key, &hmac(&sha256(&client_key), auth_message.as_bytes()));
    assert_eq!(B64.encode(proof), "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=");
    let server_sig = hmac(&verifier.server_key, auth_message.as_bytes());
    assert_eq!(B64.encode(server_sig), "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
}

#[test]
fn verifier_round_trip_and_rejects() {
    let v = ScramVerifier::generate("pw");
    assert_eq!(ScramVerifier::parse(&v.encode()).unwrap(), v);
    for bad in ["", "md5abc", "SCRAM-SHA-256$x:abc$a:b", "SCRAM-SHA-256$4096:c2FsdA==$YQ==:YQ=="] {
        assert!(ScramVerifier::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn tampering_is_detected() {
    let verifier = ScramVerifier::generate("pw");
    let mut client = ScramClient::new(ScramCredential::Password("pw".into()), random_nonce());
    let mut server = ScramServer::new(verifier, random_nonce());
    let sf = server.client_first(client.client_first().as_bytes()).unwrap();
    let cf = client.server_first(sf.as_bytes()).unwrap();
    let tampered = cf.replacen("r=", "r=x", 1);
    assert_eq!(server.client_final(tampered.as_bytes()).unwrap_err(), AuthError::Nonce);
    assert!(client.server_final(b"v=AAAA").is_err());
    let mut s = ScramServer::new(ScramVerifier::generate("pw"), random_nonce());
    assert_eq!(s.client_first(b"p=tls-server-end-point,,n=,r=abc").unwrap_err(), AuthError::ChannelBinding);
    assert!(s.client_first(b"garbage").is_err());
}

#[test]
fn md5_matches_postgres_protocol() {
    let secret = md5_secret("md5_user", "password");
    assert_eq!(secret, postgres_protocol::password::md5(b"password", "md5_user"));
    let salt = [0x2a, 0x3d, 0x8f, 0xe0];
    assert_eq!(
        md5_response(&secret, salt),
        postgres_protocol::authentication::md5_hash(b"md5_user", b"password", salt)
    );
}
