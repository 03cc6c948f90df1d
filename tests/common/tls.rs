//! A `wschat serve` with TLS, its certificate signed by a CA made for the test.

use super::process::{Proc, Stdin};

/// A TLS server: its directory (the CA, certificate and key), the process and its `wss://` URL.
pub struct TlsServer {
    pub dir: tempfile::TempDir,
    pub proc: Proc,
    pub url: String,
}

impl TlsServer {
    /// Makes a CA and a certificate for 127.0.0.1 and localhost, and starts `serve` with it.
    pub fn start() -> TlsServer {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("cert.pem"), cert.pem()).unwrap();
        std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
        let mut proc = Proc::spawn(
            &[
                "serve",
                "--port",
                "0",
                "--tls-cert",
                &path("cert.pem"),
                "--tls-key",
                &path("key.pem"),
            ],
            Stdin::Null,
        );
        let line = proc.next_line();
        let url = line.strip_prefix("listening on ").unwrap().to_owned();
        TlsServer { dir, proc, url }
    }

    /// The path of a file of its directory (`ca.pem`, `cert.pem`, `key.pem`).
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }
}
