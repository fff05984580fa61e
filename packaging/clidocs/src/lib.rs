//! Man pages (clap_mangen) and shell completions (clap_complete) generated from a binary's
//! clap tree: the `fleet-clidocs` binary (src/main.rs) calls [`write_docs`] for fleet-agent
//! and fleetctl, and `packaging/build` puts the files into the Debian packages.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Writes `man/<bin>.1` and `man/<bin>-<sub>.1` for every visible subcommand, and
/// `completions/{<bin>.bash,_<bin>,<bin>.fish}` under `out`; returns the files written.
pub fn write_docs(mut cmd: clap::Command, bin: &str, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    cmd.build();
    let mut written = Vec::new();
    let mut page = |c: clap::Command, name: String| -> std::io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        let path = man.join(format!("{name}.1"));
        std::fs::write(&path, buf)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("{bin}-{}", sub.get_name());
        page(sub.clone().display_name(name.clone()), name)?;
    }
    page(cmd.clone(), bin.to_owned())?;
    for (shell, file) in [
        (Shell::Bash, format!("{bin}.bash")),
        (Shell::Zsh, format!("_{bin}")),
        (Shell::Fish, format!("{bin}.fish")),
    ] {
        let path = comp.join(file);
        let mut f = std::fs::File::create(&path)?;
        clap_complete::generate(shell, &mut cmd, bin, &mut f);
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_for_visible_subcommands_and_three_completions() {
        let cmd = clap::Command::new("demo")
            .about("a demo")
            .subcommand(clap::Command::new("run").about("runs"))
            .subcommand(clap::Command::new("secret").hide(true));
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_docs(cmd, "demo", dir.path()).expect("write_docs");
        let names: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .expect("under out")
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "man/demo-run.1",
                "man/demo.1",
                "completions/demo.bash",
                "completions/_demo",
                "completions/demo.fish"
            ]
        );
        let page = std::fs::read_to_string(dir.path().join("man/demo-run.1")).expect("page");
        assert!(
            page.contains(r"demo\-run") && page.contains("runs"),
            "{page}"
        );
    }
}
