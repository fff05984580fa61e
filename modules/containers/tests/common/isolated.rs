//! A podman of its own for tests that restart podman's state: storage, run and tmp dirs,
//! lock files and database under one directory, file locks instead of the host's shared
//! memory segment, no network. `podman system migrate` there stops only its own containers,
//! never those of tests running beside it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use fleet_testkit::{podman, PodmanScope};

pub struct IsolatedPodman {
    dir: PathBuf,
    /// The wrapper script: `podman` with this instance's roots; give it to the module.
    pub bin: PathBuf,
}

impl IsolatedPodman {
    /// A fresh instance under `/var/tmp` holding a copy of `image` from the host's store.
    pub fn new(scope: &PodmanScope, image: &str) -> IsolatedPodman {
        let dir = PathBuf::from("/var/tmp").join(scope.name("podman"));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\ndefault_ulimits = []\n\n[engine]\n\
                 runtime = \"runc\"\nlock_type = \"file\"\ntmp_dir = \"{d}/tmp\"\n\
                 events_logger = \"file\"\nevents_logfile_path = \"{d}/tmp/events.log\"\n\
                 volume_path = \"{d}/root/volumes\"\n"
            ),
        )
        .unwrap();
        let bin = dir.join("podman");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\nexport CONTAINERS_CONF={d}/containers.conf\n\
                 exec podman --root {d}/root --runroot {d}/runroot --storage-driver vfs \"$@\"\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let tar = dir.join("image.tar");
        podman(&["save", "--quiet", "-o", &tar.to_string_lossy(), image]).unwrap();
        let iso = IsolatedPodman { dir, bin };
        iso.podman(&["load", "--quiet", "-i", &tar.to_string_lossy()])
            .unwrap();
        iso
    }

    /// What a reboot does to this podman while nothing of it runs: every container's
    /// processes (main and conmon, `pids`) are killed, its tmpfs state is gone (run root,
    /// tmp dir with the `alive` file and exit files, runc's state of each container in
    /// `ids`). podman's next call refreshes its database: the containers are `created`.
    pub fn reboot(&self, pids: &[i64], ids: &[String]) {
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        for pid in pids {
            let gone = (0..200).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(25));
                !std::path::Path::new(&format!("/proc/{pid}")).exists()
            });
            assert!(gone, "process {pid} ended");
        }
        let mounts = Command::new("findmnt")
            .args(["-rn", "-o", "TARGET"])
            .output()
            .unwrap();
        let prefix = self.dir.to_string_lossy().into_owned();
        let mut ours: Vec<String> = String::from_utf8_lossy(&mounts.stdout)
            .lines()
            .filter(|m| m.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        ours.sort_unstable_by(|a, b| b.cmp(a));
        for m in ours {
            let ok = Command::new("umount").arg(&m).status().unwrap();
            assert!(ok.success(), "umount {m}");
        }
        for d in ["runroot", "tmp"] {
            std::fs::remove_dir_all(self.dir.join(d)).unwrap();
        }
        for id in ids {
            let _ = Command::new("runc")
                .args(["--root", "/run/runc", "delete", "--force", id])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The wrapper's path as a string (for configs and [`super::pid_and_id`]).
    pub fn bin_str(&self) -> String {
        self.bin.to_string_lossy().into_owned()
    }

    /// Runs `podman <args>` in this instance; stdout, or stderr as the error.
    pub fn podman(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for IsolatedPodman {
    fn drop(&mut self) {
        if let Err(e) = self.podman(&["rm", "--all", "--force", "--time", "0"]) {
            eprintln!("isolated podman {}: rm --all: {e}", self.dir.display());
        }
        let _ = self.podman(&["volume", "rm", "--all", "--force"]);
        let _ = self.podman(&["rmi", "--all", "--force"]);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("isolated podman {}: {e}", self.dir.display());
        }
    }
}
