//! The lab's control socket (`control.sock` in its state directory): one
//! JSON request per connection, answered by progress lines and one final
//! line. The supervisor serves it (one request at a time, restarting dead
//! processes between requests); every `lab` verb that changes the lab is a
//! client.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::{ControlPlaneMode, KubeLab};
use crate::error::{LabError, Result};
use crate::manifest::LabSpec;
use crate::manifest::{parse_lab, parse_manifest};
use crate::paths::LabPaths;
use crate::record::load_record;
use crate::supervisor::{Controller, Progress};

/// How often dead containers and agents are looked for.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// A request on the control socket (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// up, apply, delete, ping or down.
    pub op: String,
    /// The manifest text of apply and delete.
    #[serde(default)]
    pub yaml: String,
}

/// One reply line: progress, or the final word.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// `down`: what could not be removed (empty: everything went).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
}

impl Reply {
    fn finished(outcome: Result<Option<String>>) -> Reply {
        match outcome {
            Ok(summary) => Reply {
                done: Some(true),
                summary,
                ..Default::default()
            },
            Err(e) => Reply {
                done: Some(false),
                error: Some(e.to_string()),
                ..Default::default()
            },
        }
    }
}

/// Best effort: a client that went away misses the rest, the work goes on.
fn send(stream: &mut UnixStream, reply: &Reply) {
    if let Ok(line) = serde_json::to_string(reply) {
        let _ = stream.write_all(line.as_bytes());
        let _ = stream.write_all(b"\n");
    }
}

/// The supervisor's main loop: serve requests until `down`.
/// The supervisor's owner of the cluster: the lab playing the control
/// plane over the files store, or a real control plane.
enum Lab {
    Files(Box<Controller>),
    Kube(Box<KubeLab>),
}

impl Lab {
    fn up(&mut self, objects: Vec<podwire_model::Object>, progress: Progress) -> Result<String> {
        match self {
            Lab::Files(c) => c.up(objects, progress),
            Lab::Kube(k) => k.up(objects, progress),
        }
    }

    fn apply(
        &mut self,
        lab: Option<LabSpec>,
        mut objects: Vec<podwire_model::Object>,
        progress: Progress,
    ) -> Result<()> {
        match self {
            Lab::Files(c) => {
                if let Some(spec) = &lab {
                    let secrets = c.apply_lab(spec, &objects, progress)?;
                    objects.extend(secrets);
                }
                c.apply(objects, progress)
            }
            Lab::Kube(k) => k.apply_document(lab.as_ref(), objects, progress),
        }
    }

    fn delete(
        &mut self,
        lab: Option<LabSpec>,
        objects: Vec<podwire_model::Object>,
        progress: Progress,
    ) -> Result<()> {
        match self {
            Lab::Files(c) => {
                c.delete(objects, progress)?;
                if let Some(spec) = &lab {
                    c.delete_nodes(spec, progress)?;
                }
                Ok(())
            }
            Lab::Kube(k) => k.delete_document(lab.as_ref(), objects, progress),
        }
    }

    fn reap(&mut self) {
        match self {
            Lab::Files(c) => c.reap(),
            Lab::Kube(k) => k.reap(),
        }
    }

    fn down(&mut self) -> Vec<String> {
        match self {
            Lab::Files(c) => c.down(),
            Lab::Kube(k) => k.down(),
        }
    }
}

pub fn serve(paths: LabPaths, exe: PathBuf) -> Result<()> {
    let record = load_record(&paths)?;
    let lab = match ControlPlaneMode::of(&paths) {
        ControlPlaneMode::Files => {
            Lab::Files(Box::new(Controller::new(paths.clone(), exe, record.spec)?))
        }
        ControlPlaneMode::Kubernetes => {
            Lab::Kube(Box::new(KubeLab::new(paths.clone(), exe, record.spec)?))
        }
    };
    let controller = Arc::new(Mutex::new(lab));
    let _ = std::fs::remove_file(paths.socket());
    let listener = UnixListener::bind(paths.socket())
        .map_err(|e| LabError::io("cannot open the control socket", e))?;
    std::fs::write(paths.supervisor_pid(), std::process::id().to_string())
        .map_err(|e| LabError::io("cannot write supervisor.pid", e))?;
    {
        let controller = Arc::clone(&controller);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(REAP_EVERY);
                if let Ok(mut c) = controller.lock() {
                    c.reap();
                }
            }
        });
    }
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            continue;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let bad = LabError::Invalid(format!("bad request: {e}"));
                send(&mut stream, &Reply::finished(Err(bad)));
                continue;
            }
        };
        let mut out = stream
            .try_clone()
            .map_err(|e| LabError::io("control socket", e))?;
        let mut progress = |msg: &str| {
            tracing::info!("{msg}");
            send(
                &mut out,
                &Reply {
                    progress: Some(msg.to_string()),
                    ..Default::default()
                },
            );
        };
        let Ok(mut c) = controller.lock() else { break };
        let outcome: Result<Option<String>> = match request.op.as_str() {
            "up" => std::fs::read_to_string(paths.dir.join("manifest.yaml"))
                .map_err(|e| LabError::io("cannot read the lab manifest", e))
                .and_then(|text| parse_lab(&text).map_err(LabError::from))
                .and_then(|m| c.up(m.objects, &mut progress).map(Some)),
            "apply" => parse_manifest(&request.yaml)
                .map_err(LabError::from)
                .and_then(|(lab, objs)| c.apply(lab, objs, &mut progress).map(|_| None)),
            "delete" => parse_manifest(&request.yaml)
                .map_err(LabError::from)
                .and_then(|(lab, objs)| c.delete(lab, objs, &mut progress).map(|_| None)),
            "ping" => Ok(None),
            "down" => {
                let left = c.down();
                send(
                    &mut stream,
                    &Reply {
                        done: Some(true),
                        summary: Some(format!("lab {} torn down", paths.name)),
                        left,
                        ..Default::default()
                    },
                );
                std::process::exit(0);
            }
            other => Err(LabError::Invalid(format!("unknown request {other:?}"))),
        };
        send(&mut stream, &Reply::finished(outcome));
    }
    Ok(())
}

/// Sends one request and streams the replies to `on_progress`.
pub fn request(
    paths: &LabPaths,
    op: &str,
    yaml: &str,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Option<String>> {
    exchange(paths, op, yaml, on_progress).and_then(|reply| match reply.done {
        Some(true) => Ok(reply.summary),
        _ => Err(LabError::Failed(reply.error.unwrap_or_default())),
    })
}

/// Asks the supervisor to stop everything and remove the lab; what it
/// could not remove. An error: the supervisor did not answer (it may be
/// dead), so nothing was done.
pub fn down(paths: &LabPaths) -> Result<Vec<String>> {
    exchange(paths, "down", "", &mut |_| {}).map(|reply| reply.left)
}

/// One request; the final reply.
fn exchange(
    paths: &LabPaths,
    op: &str,
    yaml: &str,
    on_progress: &mut dyn FnMut(&str),
) -> Result<Reply> {
    let mut stream = UnixStream::connect(paths.socket())
        .map_err(|e| LabError::Failed(format!("the supervisor of lab {} does not answer ({e}); `podwire lab down --name {}` still removes it", paths.name, paths.name)))?;
    let line = serde_json::to_string(&Request {
        op: op.into(),
        yaml: yaml.into(),
    })
    .map_err(|e| LabError::Failed(e.to_string()))?;
    stream
        .write_all(line.as_bytes())
        .and_then(|_| stream.write_all(b"\n"))
        .map_err(|e| LabError::io("control socket", e))?;
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| LabError::io("control socket", e))?;
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|e| LabError::Failed(format!("bad reply {line:?}: {e}")))?;
        if let Some(msg) = &reply.progress {
            on_progress(msg);
        }
        if reply.done.is_some() {
            return Ok(reply);
        }
    }
    Err(LabError::Failed(format!(
        "the supervisor of lab {} stopped answering; see {}",
        paths.name,
        paths.supervisor_log().display()
    )))
}
