//! Container processes: what a container runs (there are no images: no
//! command means the built-in server on the first port, `podwire ...`
//! means this binary), starting an attempt through its shim, watching it,
//! signalling its process group, and adopting the attempts a previous
//! kubelet started. Blocking calls: run them off the async threads.

use std::hash::{Hash, Hasher};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Container;
use nix::sys::signal::Signal;

use super::env::expand;
use super::error::{KubeletError, Result};
use super::shim::ShimSpec;
use super::state::{ExitInfo, Layout, ProcessInfo, alive, read_json, write_json};

/// The PATH a container gets unless its env sets one (an image's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a shim may take to report the container's process.
const START_LIMIT: Duration = Duration::from_secs(10);

/// The argv of a container: its command and args ($(VAR) expanded), the
/// first word `podwire` meaning this binary; without a command, the
/// "image's entrypoint" is this binary: `podwire ARGS`, or with no args
/// `podwire serve` on the first container port (8080 without one).
pub fn argv(exe: &Path, c: &Container, vars: &[(String, String)]) -> Vec<String> {
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter().flatten().map(|s| expand(s, vars)).collect()
    };
    let exe = exe.display().to_string();
    let mut argv = match (&c.command, &c.args) {
        (Some(_), _) => {
            let mut argv = expand_all(&c.command);
            argv.extend(expand_all(&c.args));
            argv
        }
        (None, Some(_)) => {
            let mut argv = vec![exe.clone()];
            argv.extend(expand_all(&c.args));
            argv
        }
        (None, None) => {
            let port = c
                .ports
                .as_ref()
                .and_then(|p| p.first())
                .map_or(8080, |p| p.container_port);
            vec![
                exe.clone(),
                "serve".into(),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
            ]
        }
    };
    if argv.first().is_some_and(|p| p == "podwire") {
        argv[0] = exe;
    }
    argv
}

/// A stable container id for (pod uid, container, attempt), 64 hex digits
/// like a runtime's.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    (0u8..4)
        .map(|round| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (round, uid, name, attempt).hash(&mut h);
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// A running attempt.
#[derive(Debug)]
pub struct Attempt {
    pub number: u32,
    pub info: ProcessInfo,
    /// The shim, when this kubelet started it (reaped here); None when
    /// adopted from an earlier run.
    pub shim: Option<Child>,
    pub container_id: String,
}

/// Files of one attempt.
pub struct AttemptFiles {
    pub dir: PathBuf,
    pub spec: PathBuf,
    pub pid: PathBuf,
    pub exit: PathBuf,
    pub log: PathBuf,
}

pub fn files(layout: &Layout, uid: &str, name: &str, number: u32) -> AttemptFiles {
    let dir = layout.attempt(uid, name, number);
    AttemptFiles {
        spec: dir.join("spec.json"),
        pid: dir.join("pid.json"),
        exit: dir.join("exit.json"),
        log: layout.log(uid, name, number),
        dir,
    }
}

/// What came of a start.
pub enum Started {
    Running(Attempt),
    /// The process could not start (exit code 128, StartError).
    Failed(ExitInfo),
}

/// Starts attempt `number` through a shim (`exe kubelet shim SPEC`) and
/// waits until the shim reports the process (or its failure).
pub fn launch(
    exe: &Path,
    f: &AttemptFiles,
    spec: &ShimSpec,
    number: u32,
    container_id: String,
) -> Result<Started> {
    // A directory left from a start that died half-way is started afresh.
    let _ = std::fs::remove_dir_all(&f.dir);
    std::fs::create_dir_all(&f.dir)
        .map_err(|e| KubeletError::io(format!("cannot create {}", f.dir.display()), e))?;
    write_json(&f.spec, spec)?;
    let shim_log = std::fs::File::create(f.dir.join("shim.log"))
        .map_err(|e| KubeletError::io("cannot create the shim's log", e))?;
    let shim_err = shim_log
        .try_clone()
        .map_err(|e| KubeletError::io("cannot duplicate the shim's log", e))?;
    let mut cmd = Command::new(exe);
    cmd.args(["kubelet", "shim"])
        .arg(&f.spec)
        .env_remove("NOTIFY_SOCKET")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(shim_log)
        .stderr(shim_err)
        // Its own process group: a signal to the kubelet's group (Ctrl-C)
        // must not end the pods.
        .process_group(0);
    let mut shim = cmd.spawn().map_err(|e| {
        KubeletError::io(
            format!("cannot start the container shim {}", exe.display()),
            e,
        )
    })?;
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Some(info) = read_json::<ExitInfo>(&f.exit)
            && read_json::<ProcessInfo>(&f.pid).is_none()
        {
            let _ = shim.wait();
            return Ok(Started::Failed(info));
        }
        if let Some(info) = read_json::<ProcessInfo>(&f.pid) {
            return Ok(Started::Running(Attempt {
                number,
                info,
                shim: Some(shim),
                container_id,
            }));
        }
        if let Ok(Some(status)) = shim.try_wait() {
            let log = std::fs::read_to_string(f.dir.join("shim.log")).unwrap_or_default();
            return Err(KubeletError::Pod(format!(
                "the container shim exited ({status}) before starting the container: {}",
                log.trim()
            )));
        }
        if Instant::now() > deadline {
            let _ = shim.kill();
            let _ = shim.wait();
            return Err(KubeletError::Pod(format!(
                "the container shim did not start the container within {START_LIMIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What an attempt is doing.
pub enum Observed {
    Running,
    Exited(ExitInfo),
    /// Neither the container nor its shim exists, and no exit was recorded
    /// (killed from outside, or the machine restarted).
    Lost,
}

/// Looks at an attempt (reaping the shim when it is ours).
pub fn observe(f: &AttemptFiles, attempt: &mut Attempt) -> Observed {
    if let Some(shim) = attempt.shim.as_mut() {
        let _ = shim.try_wait();
    }
    if let Some(info) = read_json::<ExitInfo>(&f.exit) {
        return Observed::Exited(info);
    }
    let i = &attempt.info;
    if alive(i.pid, i.start_ticks) || alive(i.shim_pid, i.shim_start_ticks) {
        Observed::Running
    } else {
        // The exit file may have been written between the two looks.
        match read_json::<ExitInfo>(&f.exit) {
            Some(info) => Observed::Exited(info),
            None => Observed::Lost,
        }
    }
}

/// The attempt a previous kubelet started, if its process still runs;
/// else how it ended.
pub fn adopt(
    f: &AttemptFiles,
    number: u32,
    container_id: String,
) -> std::result::Result<Attempt, Option<ExitInfo>> {
    let Some(info) = read_json::<ProcessInfo>(&f.pid) else {
        return Err(read_json(&f.exit));
    };
    let mut attempt = Attempt {
        number,
        info,
        shim: None,
        container_id,
    };
    match observe(f, &mut attempt) {
        Observed::Running => Ok(attempt),
        Observed::Exited(info) => Err(Some(info)),
        Observed::Lost => Err(None),
    }
}

/// Sends `signal` to the container's process group, if its process is
/// still the one started (never a later process that reused the PID).
pub fn signal(info: &ProcessInfo, signal: Signal) {
    if alive(info.pid, info.start_ticks) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(info.pid), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn what_a_container_runs() {
        let exe = Path::new("/usr/bin/podwire");
        let plain = Container {
            ports: Some(vec![ContainerPort {
                container_port: 9000,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            argv(exe, &plain, &[]),
            ["/usr/bin/podwire", "serve", "--listen", "0.0.0.0:9000"]
        );
        let args_only = Container {
            args: Some(vec!["dns".into(), "--port=$(P)".into()]),
            ..Default::default()
        };
        let vars = [("P".to_string(), "53".to_string())];
        assert_eq!(
            argv(exe, &args_only, &vars),
            ["/usr/bin/podwire", "dns", "--port=53"]
        );
        let shell = Container {
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["exit 1".into()]),
            ..Default::default()
        };
        assert_eq!(argv(exe, &shell, &[]), ["sh", "-c", "exit 1"]);
        let own = Container {
            command: Some(vec!["podwire".into(), "serve".into()]),
            ..Default::default()
        };
        assert_eq!(argv(exe, &own, &[])[0], "/usr/bin/podwire");
    }

    #[test]
    fn container_ids_are_stable_and_distinct() {
        let a = container_id("u", "c", 0);
        assert_eq!(a.len(), 64);
        assert_eq!(a, container_id("u", "c", 0));
        assert_ne!(a, container_id("u", "c", 1));
    }
}
