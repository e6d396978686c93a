//! `skiff cert`: certificates for nodes — a CA and the node certificates it signs (production,
//! mutual TLS), or self-signed dev certificates that peers pin by SHA-256 fingerprint.
//!
//! Files: `NAME.pem` (certificate) and `NAME.key` (private key, mode 0600) in `--out`.

use anyhow::{Context, Result};
use clap::Subcommand;
use skiff_transport::cert::{self, CertificateAuthority, GeneratedCert};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum CertCommand {
    /// Create a certificate authority: `ca.pem` and `ca.key`.
    Ca {
        #[arg(long, default_value = "skiff-ca")]
        name: String,
        #[arg(short, long, default_value = ".")]
        out: PathBuf,
    },
    /// Issue a node certificate signed by the CA in `--ca` (a directory holding ca.pem/ca.key).
    Node {
        name: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(short, long, default_value = ".")]
        out: PathBuf,
    },
    /// Create a self-signed dev certificate and print the pin peers use for it.
    Dev {
        name: String,
        #[arg(short, long, default_value = ".")]
        out: PathBuf,
    },
}

pub fn main(command: CertCommand) -> Result<i32> {
    match command {
        CertCommand::Ca { name, out } => {
            let ca = cert::generate_ca(&name)?;
            write(&out, "ca", ca.cert())?;
        }
        CertCommand::Node { name, ca, out } => {
            let authority = CertificateAuthority::load(ca.join("ca.pem"), ca.join("ca.key"))
                .with_context(|| format!("cannot load the CA from {}", ca.display()))?;
            write(&out, &name, &authority.issue(&name)?)?;
        }
        CertCommand::Dev { name, out } => {
            let generated = cert::generate_self_signed(&name)?;
            write(&out, &name, &generated)?;
            println!("pin: {name}=HOST:PORT#{}", generated.fingerprint());
        }
    }
    Ok(0)
}

fn write(dir: &Path, stem: &str, generated: &GeneratedCert) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (cert_path, key_path) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    generated.write_files(&cert_path, &key_path)?;
    println!("wrote {} and {}", cert_path.display(), key_path.display());
    println!("fingerprint: {}", generated.fingerprint());
    Ok(())
}
