//! Keys and certificates for one control plane, made with the `openssl` CLI.
//!
//! We make our own CA and serving certificate instead of letting kube-apiserver self-sign: the
//! self-signed bundle it writes is a leaf plus its CA, which rustls does not accept as a trust
//! root reliably, whereas a proper CA lets every client (kube-rs, kubectl, the controller-manager's
//! `--root-ca-file`) verify `https://127.0.0.1:<port>` for real.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// Paths of the generated material.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca_crt: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    /// Service-account token signing key (RSA, like kubeadm makes).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

const OPENSSL_CONFIG: &str = r#"
[req]
distinguished_name = dn
prompt = no
[dn]
CN = gpupool-testenv-ca
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
"#;

fn openssl(dir: &Path, args: &[&str]) -> Result<(), Error> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| Error::Command {
            what: format!("running `openssl {}`", args.join(" ")),
            detail: format!("{e} (is the openssl CLI installed and on PATH?)"),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            what: format!("`openssl {}`", args.join(" ")),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Generates the CA, the apiserver serving certificate and the service-account key pair in `dir`.
/// Blocking (runs a handful of short openssl commands).
pub(crate) fn generate(dir: &Path) -> Result<Pki, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    crate::process::write_private(&dir.join("openssl.cnf"), OPENSSL_CONFIG.as_bytes())?;
    let serial = format!("0x{}", random_hex(16)?);
    let steps: &[&[&str]] = &[
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca.key",
        ],
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-config",
            "openssl.cnf",
            "-extensions",
            "v3_ca",
            "-days",
            "3650",
            "-out",
            "ca.crt",
        ],
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "apiserver.key",
        ],
        &[
            "req",
            "-new",
            "-key",
            "apiserver.key",
            "-config",
            "openssl.cnf",
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            "apiserver.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "3650",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "v3_server",
            "-out",
            "apiserver.crt",
        ],
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ],
        &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ];
    for step in steps {
        openssl(dir, step)?;
    }
    Ok(Pki {
        ca_crt: dir.join("ca.crt"),
        server_crt: dir.join("apiserver.crt"),
        server_key: dir.join("apiserver.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    })
}

/// `n` random bytes from the kernel, hex encoded (bearer tokens, serials).
pub(crate) fn random_hex(n: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| Error::io("reading /dev/urandom", e))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Standard base64 (with padding), for `certificate-authority-data` in kubeconfigs so that they
/// are self-contained and can be copied out of the plane's temp dir.
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
