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
