//! A pod's volumes as directories under its state directory, bind-mounted
//! where its containers mount them: configMap, secret, downwardAPI,
//! emptyDir, hostPath and projected (which is how the ServiceAccount token
//! arrives: the API's admission adds a projected `kube-api-access-*` volume
//! with the token, the cluster CA and the namespace, mounted at
//! /var/run/secrets/kubernetes.io/serviceaccount). Tokens are requested
//! bound to the pod and written again when 80% of their lifetime is gone.
//!
//! podwire runs no images, so a mount point must exist on the node; the
//! kubelet creates missing ones only under /run/secrets (empty
//! directories, as a runtime would in an image), and reports the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, ServiceAccountTokenProjection, Volume,
};

use super::Ctx;
use super::api;
use super::env::{Facts, container_env};
use super::state::write_atomic;

/// A token file to keep fresh.
#[derive(Debug, Clone)]
pub struct TokenFile {
    pub file: PathBuf,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    pub refresh_at: Instant,
}

/// Where missing mount points may be created.
const CREATABLE: [&str; 2] = ["/run/secrets/", "/var/run/secrets/"];

fn mode(explicit: Option<i32>, default: Option<i32>) -> u32 {
    explicit.or(default).unwrap_or(0o644) as u32 & 0o777
}

/// Writes the selected keys of a map (all of them without items).
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                write(dir, k, v, mode(None, default_mode))?;
            }
        }
        Some(items) => {
            for item in items {
                let v = data
                    .get(&item.key)
                    .ok_or_else(|| format!("{what} has no key {:?}", item.key))?;
                write(dir, &item.path, v, mode(item.mode, default_mode))?;
            }
        }
    }
    Ok(())
}

fn write(dir: &Path, rel: &str, body: &[u8], mode: u32) -> Result<(), String> {
    if rel.starts_with('/') || rel.split('/').any(|p| p == "..") {
        return Err(format!(
            "volume path {rel:?} must be relative, without '..'"
        ));
    }
    write_atomic(&dir.join(rel), body, mode).map_err(|e| e.to_string())
}

fn downward(
    pod: &Pod,
    dir: &Path,
    files: &[DownwardAPIVolumeFile],
    facts: &Facts,
) -> Result<(), String> {
    for f in files {
        let Some(field) = &f.field_ref else {
            continue;
        };
        // The env rules know every field; one variable computes it.
        let probe = Container {
            env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "V".into(),
                value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
                    field_ref: Some(field.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let vars = container_env(pod, &probe, &Default::default(), facts)?;
        let value = vars
            .into_iter()
            .find(|(k, _)| k == "V")
            .map(|(_, v)| v)
            .unwrap_or_default();
        write(dir, &f.path, value.as_bytes(), mode(f.mode, None))?;
    }
    Ok(())
}

async fn token(
    ctx: &Ctx,
    pod: &Pod,
    dir: &Path,
    t: &ServiceAccountTokenProjection,
    mode_bits: u32,
) -> Result<TokenFile, String> {
    let file = dir.join(&t.path);
    let mut tf = TokenFile {
        file,
        audience: t.audience.clone().filter(|a| !a.is_empty()),
        expiration_seconds: t.expiration_seconds.unwrap_or(3600).max(600),
        refresh_at: Instant::now(),
    };
    refresh(ctx, pod, &mut tf, mode_bits).await?;
    Ok(tf)
}

async fn refresh(ctx: &Ctx, pod: &Pod, tf: &mut TokenFile, mode_bits: u32) -> Result<(), String> {
    let (text, _expiry) = api::token(ctx, pod, tf.audience.as_deref(), tf.expiration_seconds)
        .await
        .map_err(|e| e.to_string())?;
    write_atomic(&tf.file, text.as_bytes(), mode_bits).map_err(|e| e.to_string())?;
    // Refresh at 80% of the lifetime, as kubelet's token manager does.
    tf.refresh_at = Instant::now() + Duration::from_secs((tf.expiration_seconds as u64) * 4 / 5);
    Ok(())
}

/// Writes fresh tokens where they are due.
pub async fn refresh_tokens(ctx: &Ctx, pod: &Pod, tokens: &mut [TokenFile]) -> Result<(), String> {
    for tf in tokens.iter_mut().filter(|t| Instant::now() >= t.refresh_at) {
        refresh(ctx, pod, tf, 0o644).await?;
    }
    Ok(())
}

async fn map_source(
    ctx: &Ctx,
    ns: &str,
    kind: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let data = match kind {
        "configmap" => api::config_map(ctx, ns, name).await,
        _ => api::secret(ctx, ns, name).await,
    }
    .map_err(|e| e.to_string())?;
    match data {
        Some(d) => Ok(Some(d)),
        None if optional == Some(true) => Ok(None),
        None => Err(format!("{kind} \"{name}\" not found in namespace {ns}")),
    }
}

/// A ConfigMap or Secret as a volume source.
struct Keys<'a> {
    kind: &'static str,
    name: &'a str,
    items: Option<&'a Vec<KeyToPath>>,
    optional: Option<bool>,
}

async fn write_source(
    ctx: &Ctx,
    ns: &str,
    dir: &Path,
    k: Keys<'_>,
    default_mode: Option<i32>,
) -> Result<(), String> {
    if let Some(data) = map_source(ctx, ns, k.kind, k.name, k.optional).await? {
        write_keys(
            dir,
            &data,
            k.items,
            default_mode,
            &format!("{} {}", k.kind, k.name),
        )?;
    }
    Ok(())
}

/// Materializes every volume of the pod; the tokens to refresh. An error
/// names the volume (kubelet's FailedMount).
pub async fn prepare(ctx: &Ctx, pod: &Pod, facts: &Facts) -> Result<Vec<TokenFile>, String> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut tokens = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = ctx.layout.volume(&uid, &v.name);
        let fail = |e: String| format!("MountVolume.SetUp failed for volume {:?}: {e}", v.name);
        std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
        prepare_one(ctx, pod, &ns, v, &dir, facts, &mut tokens)
            .await
            .map_err(fail)?;
    }
    Ok(tokens)
}

async fn prepare_one(
    ctx: &Ctx,
    pod: &Pod,
    ns: &str,
    v: &Volume,
    dir: &Path,
    facts: &Facts,
    tokens: &mut Vec<TokenFile>,
) -> Result<(), String> {
    if let Some(cm) = &v.config_map {
        let source = Keys {
            kind: "configmap",
            name: &cm.name,
            items: cm.items.as_ref(),
            optional: cm.optional,
        };
        write_source(ctx, ns, dir, source, cm.default_mode).await?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let source = Keys {
            kind: "secret",
            name: &name,
            items: s.items.as_ref(),
            optional: s.optional,
        };
        write_source(ctx, ns, dir, source, s.default_mode).await?;
    } else if let Some(d) = &v.downward_api {
        downward(pod, dir, d.items.as_deref().unwrap_or_default(), facts)?;
    } else if let Some(p) = &v.projected {
        let default_mode = p.default_mode;
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                tokens.push(token(ctx, pod, dir, t, mode(None, default_mode)).await?);
            }
            if let Some(cm) = &source.config_map {
                let keys = Keys {
                    kind: "configmap",
                    name: &cm.name,
                    items: cm.items.as_ref(),
                    optional: cm.optional,
                };
                write_source(ctx, ns, dir, keys, default_mode).await?;
            }
            if let Some(s) = &source.secret {
                let keys = Keys {
                    kind: "secret",
                    name: &s.name,
                    items: s.items.as_ref(),
                    optional: s.optional,
                };
                write_source(ctx, ns, dir, keys, default_mode).await?;
            }
            if let Some(d) = &source.downward_api {
                downward(pod, dir, d.items.as_deref().unwrap_or_default(), facts)?;
            }
        }
    } else if v.empty_dir.is_some() || v.host_path.is_some() {
        // emptyDir: the directory itself; hostPath: mounted from the node.
    } else {
        return Err("this volume type is not supported by podwire's kubelet".into());
    }
    Ok(())
}

/// The bind mounts of one container: (source, target) for each volumeMount
/// whose mount point exists (or may be created); the others are returned
/// as warnings.
pub fn mounts(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
) -> (Vec<(PathBuf, PathBuf)>, Vec<String>) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let (mut binds, mut warnings) = (Vec::new(), Vec::new());
    for m in container.volume_mounts.iter().flatten() {
        let Some(v) = volumes.iter().find(|v| v.name == m.name) else {
            warnings.push(format!(
                "volumeMount {:?} names no volume of the pod",
                m.name
            ));
            continue;
        };
        let mut source = match &v.host_path {
            Some(h) => PathBuf::from(&h.path),
            None => ctx.layout.volume(&uid, &v.name),
        };
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            source = source.join(sub);
        }
        let target = PathBuf::from(&m.mount_path);
        if source == target {
            continue;
        }
        if !target.exists() {
            let creatable = CREATABLE.iter().any(|p| m.mount_path.starts_with(p));
            if !(creatable && std::fs::create_dir_all(&target).is_ok()) {
                warnings.push(format!(
                    "volume {:?} is not mounted at {}: the path does not exist on the node (podwire runs no images; create it on the node)",
                    m.name, m.mount_path
                ));
                continue;
            }
        }
        binds.push((source, target));
    }
    (binds, warnings)
}
