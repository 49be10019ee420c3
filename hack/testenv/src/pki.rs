//! Keys, certificates and bearer tokens for one control plane, made in process with `rcgen`.
//!
//! We make our own CA and serving certificate instead of letting kube-apiserver self-sign: the
//! self-signed bundle it writes is a leaf plus its CA, which rustls does not accept as a trust
//! root reliably, whereas a proper CA lets every client (kube-rs, kubectl, the controller-manager's
//! `--root-ca-file`) verify `https://127.0.0.1:<port>` for real.
//!
//! Every key is ECDSA P-256 (rcgen's default): kube-apiserver and kube-controller-manager accept
//! it for serving and for signing service-account tokens (ES256), and it is generated in
//! microseconds, where an RSA key takes a noticeable part of a plane's start.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Error;
use crate::process::write_private;

/// Names the API server's serving certificate is valid for: loopback, where it listens, and the
/// in-cluster names and Service IP (first address of `--service-cluster-ip-range`), as kubeadm
/// issues them.
const APISERVER_NAMES: [&str; 7] = [
    "127.0.0.1",
    "10.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// Paths of the generated material, and the CA certificate itself (kubeconfigs embed it).
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_crt: PathBuf,
    pub ca_pem: Vec<u8>,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    /// Service-account token signing key (PKCS#8) and its public half (SPKI).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    /// kube-apiserver's client certificate towards kubelets (`--kubelet-client-certificate`):
    /// a real node's kubelet authenticates the API server's `logs`/`exec` calls with it.
    pub kubelet_client_crt: PathBuf,
    pub kubelet_client_key: PathBuf,
}

/// The CA's key, kept next to its certificate so that [`client_certificate`] can issue client
/// certificates later (a real node's kubelet identity, `system:node:<name>`).
const CA_KEY: &str = "ca.key";

/// Generates the CA, the apiserver serving certificate and the service-account key pair, and
/// writes them (keys readable only by us) into `dir`.
pub(crate) fn generate(dir: &Path) -> Result<Pki, Error> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: rcgen::Error| Error::Command {
            what: format!("generating {what}"),
            detail: e.to_string(),
        }
    };
    let ca_key = KeyPair::generate().map_err(failed("the CA key"))?;
    let ca_params = ca_params();
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(failed("the CA certificate"))?;
    let ca = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(failed("the apiserver key"))?;
    let server_cert = apiserver_params()
        .map_err(failed("the apiserver certificate parameters"))?
        .signed_by(&server_key, &ca)
        .map_err(failed("the apiserver certificate"))?;
    let sa_key = KeyPair::generate().map_err(failed("the service-account key"))?;
    // Group system:masters, as kubeadm's apiserver-kubelet-client: kubelets authorize it by
    // SubjectAccessReview, so it may read logs and exec.
    let (kubelet_client_crt, kubelet_client_key) =
        issue_client(&ca, "kube-apiserver-kubelet-client", "system:masters")
            .map_err(failed("the apiserver's kubelet client certificate"))?;

    let pki = Pki {
        ca_crt: dir.join("ca.crt"),
        ca_pem: ca_cert.pem().into_bytes(),
        server_crt: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        kubelet_client_crt: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    };
    write_private(&pki.ca_crt, &pki.ca_pem)?;
    write_private(&dir.join(CA_KEY), ca.key().serialize_pem().as_bytes())?;
    write_private(&pki.kubelet_client_crt, kubelet_client_crt.as_bytes())?;
    write_private(&pki.kubelet_client_key, kubelet_client_key.as_bytes())?;
    write_private(&pki.server_crt, server_cert.pem().as_bytes())?;
    write_private(&pki.server_key, server_key.serialize_pem().as_bytes())?;
    write_private(&pki.sa_key, sa_key.serialize_pem().as_bytes())?;
    write_private(&pki.sa_pub, sa_key.public_key_pem().as_bytes())?;
    Ok(pki)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "gpupool-testenv-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A client certificate (PEM certificate, PEM key) for user `cn` in group `org`, signed by the
/// CA in `dir` (what [`generate`] wrote there). The API server (`--client-ca-file`) and kubelets
/// (`authentication.x509.clientCAFile`) accept it.
pub(crate) fn client_certificate(
    dir: &Path,
    cn: &str,
    org: &str,
) -> Result<(String, String), Error> {
    let path = dir.join(CA_KEY);
    let pem = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let failed = |e: rcgen::Error| Error::Command {
        what: format!("issuing a client certificate for {cn}"),
        detail: e.to_string(),
    };
    // The same subject and key as the CA certificate: what a verifier matches an issuer by.
    let ca = Issuer::new(ca_params(), KeyPair::from_pem(&pem).map_err(failed)?);
    issue_client(&ca, cn, org).map_err(failed)
}

fn issue_client(
    ca: &Issuer<'_, KeyPair>,
    cn: &str,
    org: &str,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    // One group (rcgen keeps one attribute per type): enough for system:nodes and system:masters.
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, org);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn apiserver_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(APISERVER_NAMES.map(String::from).to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// A bearer token: 24 bytes from the kernel's CSPRNG, URL-safe base64 (no `,` that would break
/// the token CSV, no padding).
pub(crate) fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| Error::Command {
        what: "reading random bytes for a bearer token".into(),
        detail: e.to_string(),
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Standard base64, for `certificate-authority-data` in kubeconfigs (self-contained, so they can
/// be copied out of the plane's temp dir).
pub(crate) fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_csv_safe() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    /// What kube-apiserver and kube-controller-manager parse: PEM blocks of the right types.
    /// (That they accept them, and that clients verify the serving certificate against the CA,
    /// is proven by every plane test: each request is TLS-verified, and TokenRequest signs with
    /// the service-account key.)
    #[test]
    fn writes_pem_files_of_the_expected_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path()).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(String::from_utf8_lossy(&pki.ca_pem).starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(read(&pki.ca_crt).as_bytes(), pki.ca_pem);
        assert!(read(&pki.server_crt).starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(read(&pki.server_key).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(read(&pki.sa_key).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(read(&pki.sa_pub).starts_with("-----BEGIN PUBLIC KEY-----"));
    }
}
