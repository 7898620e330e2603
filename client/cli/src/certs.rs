//! `qm certs`: a certificate authority for a cluster, and the certificates
//! of its replicas, admins, providers and consumers (see `SECURITY.md`).
//!
//! ```text
//!  qm certs init --dir DIR     ca.crt ca.key, replica-N, admin, provider-<id>, consumer-<namespace>
//!  qm certs issue --dir DIR --role R --name N [--namespace NS] [--hosts H,..] [--capability URI]
//!  qm certs show FILE          the role, name and namespace a certificate states
//!  qm certs revoke --dir DIR FILE..   add certificates to DIR/ca.crl (replicas reload it)
//! ```
//!
//! No replica is contacted: these commands only read and write files.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::error::CliError;
use super::output::{print_json, OutputFormat};
use super::table::Table;
use qm_ca::{file_stem, CA_VALIDITY_DAYS, CERT_VALIDITY_DAYS, CRL_FILE};
use qm_ca::{CertAuthority, CertError, CertSpec, Validity};
use qm_client::tls::{Identity, Role};

/// Replica certificates `init` makes at most.
pub const INIT_REPLICAS_MAX: u32 = 16;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA and the certificates of a cluster in a new directory.
    Init(InitArgs),
    /// Issue one more certificate with the CA of a directory made by `init`.
    Issue(IssueArgs),
    /// Print the identity (role, name, namespace) a certificate states.
    Show {
        /// A PEM certificate file.
        file: PathBuf,
    },
    /// Revoke certificates: add them to the CA's revocation list (DIR/ca.crl,
    /// created if missing), which replicas started with --tls-crl reload and
    /// check at every handshake and call. With no FILE, renews the list as is.
    Revoke {
        /// The directory `init` made (its ca.key signs the list).
        #[arg(long)]
        dir: PathBuf,
        /// PEM certificate files issued by that CA.
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write; created if missing. An existing CA key there is never replaced.
    #[arg(long)]
    pub dir: PathBuf,
    /// Replica certificates (role resource_manager): replica-1 .. replica-N.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// DNS names and IP addresses the replicas are dialled at (every replica certificate names all of them).
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub hosts: Vec<String>,
    /// Provider certificates (role resource_provider), one per provider id.
    #[arg(long, value_delimiter = ',', default_value = "node_1,node_2")]
    pub providers: Vec<String>,
    /// Consumer certificates (role resource_consumer), one per namespace, named consumer-<namespace>.
    #[arg(long, value_delimiter = ',', default_value = "default")]
    pub namespaces: Vec<String>,
    /// Validity of the issued certificates.
    #[arg(long, default_value_t = CERT_VALIDITY_DAYS)]
    pub days: u64,
    /// Validity of the CA.
    #[arg(long, default_value_t = CA_VALIDITY_DAYS)]
    pub ca_days: u64,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The directory `init` made (its ca.crt and ca.key sign the new certificate, which is written there too).
    #[arg(long)]
    pub dir: PathBuf,
    /// resource_manager, resource_provider, resource_consumer or admin.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// A provider's provider_id; a label for the other roles.
    #[arg(long)]
    pub name: String,
    /// A consumer's namespace (required for consumers, refused for the others).
    #[arg(long)]
    pub namespace: Option<String>,
    /// For a replica: DNS names and IP addresses it is dialled at.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// A capability URI that narrows the holder's policy, e.g.
    /// `qm-capability:kinds=cpu_cores;max_per_request=cpu_cores:4` (SECURITY.md).
    #[arg(long, value_name = "URI")]
    pub capability: Option<String>,
    /// Validity in days.
    #[arg(long, default_value_t = CERT_VALIDITY_DAYS)]
    pub days: u64,
    /// File name without extension; default `<replica|provider|consumer|admin>-<name>`.
    #[arg(long)]
    pub out: Option<String>,
}

/// One file pair written, for the report.
#[derive(Debug, Serialize)]
struct Written {
    role: String,
    name: String,
    namespace: Option<String>,
    cert: PathBuf,
    key: PathBuf,
}

pub fn run(command: CertsCommand, format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match command {
        CertsCommand::Init(args) => {
            let written = init(&args)?;
            print_written(&args.dir, &written, format, out)
        }
        CertsCommand::Issue(args) => {
            let written = issue(&args)?;
            print_written(&args.dir, &[written], format, out)
        }
        CertsCommand::Revoke { dir, files } => {
            let pems = files
                .iter()
                .map(|file| {
                    std::fs::read_to_string(file).map_err(|error| CliError::Input {
                        path: file.display().to_string(),
                        reason: error.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let crl = dir.join(CRL_FILE);
            let listed = CertAuthority::load(&dir)?.revoke(&crl, &pems)?;
            let serials: Vec<String> = listed.iter().map(|cert| hex(&cert.serial)).collect();
            match format {
                OutputFormat::Json => print_json(&serde_json::json!({"crl": crl, "revoked_serials": serials}), out),
                OutputFormat::Table => {
                    writeln!(out, "{}: {} revoked certificate(s)", crl.display(), serials.len())?;
                    for serial in serials {
                        writeln!(out, "  {serial}")?;
                    }
                    Ok(())
                }
            }
        }
        CertsCommand::Show { file } => {
            let pem = std::fs::read_to_string(&file).map_err(|error| CliError::Input {
                path: file.display().to_string(),
                reason: error.to_string(),
            })?;
            let identity = Identity::from_certificate_pem(&pem).map_err(CertError::from)?;
            match format {
                OutputFormat::Json => print_json(
                    &serde_json::json!({"role": identity.role.as_str(), "name": identity.name, "namespace": identity.namespace}),
                    out,
                ),
                OutputFormat::Table => {
                    let mut table = Table::new(["ROLE", "NAME", "NAMESPACE"]);
                    table.row([identity.role.as_str(), &identity.name, identity.namespace.as_deref().unwrap_or("-")]);
                    table.write(out)
                }
            }
        }
    }
}

/// `qm certs init`: the CA, then every certificate, into `args.dir`.
fn init(args: &InitArgs) -> Result<Vec<Written>, CertError> {
    if args.replicas == 0 || args.replicas > INIT_REPLICAS_MAX {
        return Err(CertError::Invalid {
            field: "replicas",
            reason: format!("must be 1..={INIT_REPLICAS_MAX}"),
        });
    }
    let mut specs = Vec::new();
    for replica in 1..=args.replicas {
        let identity = Identity::new(Role::ResourceManager, format!("replica-{replica}"), None)?;
        specs.push((file_stem(&identity), CertSpec::new(identity).with_hosts(args.hosts.clone())));
    }
    let admin = Identity::new(Role::Admin, "admin", None)?;
    specs.push((file_stem(&admin), CertSpec::new(admin)));
    for provider in args.providers.iter().filter(|name| !name.is_empty()) {
        let identity = Identity::new(Role::ResourceProvider, provider.as_str(), None)?;
        specs.push((file_stem(&identity), CertSpec::new(identity)));
    }
    for namespace in args.namespaces.iter().filter(|name| !name.is_empty()) {
        let identity = Identity::new(Role::ResourceConsumer, format!("consumer-{namespace}"), Some(namespace.clone()))?;
        specs.push((file_stem(&identity), CertSpec::new(identity)));
    }
    // Everything is checked before anything is written.
    std::fs::create_dir_all(&args.dir).map_err(|error| CertError::File {
        path: args.dir.clone(),
        reason: error.to_string(),
    })?;
    let authority = CertAuthority::generate("Quartermaster cluster CA", Validity::days_from_now(args.ca_days))?;
    authority.save(&args.dir)?;
    // An empty revocation list, so that replicas can be started with
    // --tls-crl from the first day and a revocation needs no restart.
    authority.revoke(&args.dir.join(CRL_FILE), &[])?;
    specs
        .into_iter()
        .map(|(stem, spec)| write(&authority, &args.dir, &stem, spec.with_validity(Validity::days_from_now(args.days))))
        .collect()
}

/// `qm certs issue`: one certificate signed by the directory's CA.
fn issue(args: &IssueArgs) -> Result<Written, CertError> {
    let mut identity = Identity::new(args.role, args.name.as_str(), args.namespace.clone())?;
    if let Some(uri) = &args.capability {
        // Refused here rather than at every call the certificate makes.
        qm_state_machine::policy::Capability::parse_uri(uri).map_err(|invalid| CertError::Invalid {
            field: "capability",
            reason: invalid.reason,
        })?;
        identity = identity.with_capability(uri.clone());
    }
    let authority = CertAuthority::load(&args.dir)?;
    let stem = args.out.clone().unwrap_or_else(|| file_stem(&identity));
    let spec = CertSpec::new(identity)
        .with_hosts(args.hosts.iter().filter(|host| !host.is_empty()).cloned())
        .with_validity(Validity::days_from_now(args.days));
    write(&authority, &args.dir, &stem, spec)
}

fn write(authority: &CertAuthority, dir: &Path, stem: &str, spec: CertSpec) -> Result<Written, CertError> {
    let (cert, key) = authority.issue(&spec)?.save(dir, stem)?;
    Ok(Written {
        role: spec.identity.role.as_str().to_owned(),
        name: spec.identity.name,
        namespace: spec.identity.namespace,
        cert,
        key,
    })
}

fn print_written(dir: &Path, written: &[Written], format: OutputFormat, out: &mut dyn Write) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => print_json(&written, out),
        OutputFormat::Table => {
            let mut table = Table::new(["ROLE", "NAME", "NAMESPACE", "CERTIFICATE", "KEY"]);
            for file in written {
                table.row([
                    file.role.as_str(),
                    &file.name,
                    file.namespace.as_deref().unwrap_or("-"),
                    &file.cert.display().to_string(),
                    &file.key.display().to_string(),
                ]);
            }
            table.write(out)?;
            writeln!(out, "CA: {}", dir.join(qm_client::tls::CA_CERT_FILE).display())?;
            Ok(())
        }
    }
}

/// A serial number in hex, as `openssl x509 -noout -serial` prints it.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| format!("{text:?} is not one of resource_manager, resource_provider, resource_consumer, admin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_issue_write_certificates_of_one_ca() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let init_args = InitArgs {
            dir: certs.clone(),
            replicas: 2,
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            providers: vec!["node_1".into()],
            namespaces: vec!["team-a".into()],
            days: 1,
            ca_days: 1,
        };
        let written = init(&init_args).unwrap();
        let stems: Vec<String> = written
            .iter()
            .map(|file| file.cert.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(vec!["replica-1", "replica-2", "admin", "provider-node_1", "consumer-team-a"], stems);
        let consumer = std::fs::read_to_string(certs.join("consumer-team-a.crt")).unwrap();
        assert_eq!(
            Identity::new(Role::ResourceConsumer, "consumer-team-a", Some("team-a".into())).unwrap(),
            Identity::from_certificate_pem(&consumer).unwrap()
        );
        let crl = std::fs::read_to_string(certs.join(CRL_FILE)).unwrap();
        assert_eq!(Ok(Vec::new()), qm_ca::read_revocation_list(&crl), "an empty CRL to start from");
        assert!(
            matches!(init(&init_args), Err(CertError::File { .. })),
            "a second init keeps the CA"
        );

        let issued = issue(&IssueArgs {
            dir: certs.clone(),
            role: Role::ResourceProvider,
            name: "node_2".into(),
            namespace: None,
            hosts: Vec::new(),
            capability: None,
            days: 1,
            out: None,
        })
        .unwrap();
        assert_eq!(certs.join("provider-node_2.crt"), issued.cert);
        let refused = issue(&IssueArgs {
            dir: certs.clone(),
            role: Role::ResourceConsumer,
            name: "agent".into(),
            namespace: None,
            hosts: Vec::new(),
            capability: None,
            days: 1,
            out: None,
        });
        assert!(matches!(refused, Err(CertError::Identity(_))), "a consumer needs a namespace");

        // --- a capability URI is written into the certificate, and a malformed one refused
        let narrowed = |uri: &str| IssueArgs {
            dir: certs.clone(),
            role: Role::ResourceConsumer,
            name: "batch".into(),
            namespace: Some("team-a".into()),
            hosts: Vec::new(),
            capability: Some(uri.into()),
            days: 1,
            out: None,
        };
        let uri = "qm-capability:kinds=cpu_cores;max_per_request=cpu_cores:2";
        let issued = issue(&narrowed(uri)).unwrap();
        let identity = Identity::from_certificate_pem(&std::fs::read_to_string(issued.cert).unwrap()).unwrap();
        assert_eq!(Some(uri), identity.capability.as_deref());
        let malformed = issue(&narrowed("qm-capability:colour=red"));
        assert!(
            matches!(malformed, Err(CertError::Invalid { field: "capability", .. })),
            "{malformed:?}"
        );
    }
}
