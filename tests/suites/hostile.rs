//! A hostile guest against the host side of vm isolation. The guest owns its kernel,
//! so it can put any FUSE request on the virtio-fs queues; this suite does exactly
//! that, with no VM: a vhost-user frontend of its own (`husk_e2e::vhost_user`,
//! `husk_e2e::fuse_client`) drives virtiofsd spawned with the arguments husk's qemu
//! backend gives it (`husk_runtime::hypervisor::qemu::virtiofsd_args`), and the suite
//! checks the host afterwards: canaries outside the share intact, nothing created
//! outside it, every escaping request refused, and virtiofsd itself confined (its
//! root is not the host's, it holds no host directory or file outside the share).
//!
//! Why the sandbox is what confines: virtiofsd 1.14 opens (LOOKUP, CREATE) with
//! openat2(RESOLVE_IN_ROOT), but passes the guest's names straight to mkdirat,
//! mknodat, symlinkat, unlinkat, renameat and linkat, where an absolute name ignores
//! the directory. Only a root that is the share (`--sandbox namespace`) stops those.
//!
//! Needs: root (virtiofsd runs as root, as under husk) and virtiofsd 1.14 in
//! $HUSK_CACHE/bin or on PATH (`bash scripts/setup.sh`). It fails loudly without.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::os::linux::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_e2e::cmd::{self, Background};
use husk_e2e::fuse_client::{FuseClientError, FuseReply, FuseSession, ROOT_NODE};
use husk_runtime::hypervisor::qemu::{virtiofsd_args, FsSandbox};
use libtest_mimic::{Arguments, Failed};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A whole case, virtiofsd's start and every request included.
const CASE_TIME_BOX: Duration = Duration::from_secs(120);
/// One FUSE request (and each vhost-user message) must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
/// virtiofsd's socket, relative to the state dir it works in (as under husk).
const VIRTIOFS_SOCKET: &str = "virtiofs.sock";
/// How many times the ".." walk climbs: more than any temp dir is deep.
const DOTDOT_CLIMBS: usize = 8;

struct Env {
    virtiofsd: PathBuf,
}

fn main() {
    let args = Arguments::from_args();
    husk_e2e::require_root("hostile");
    let virtiofsd = husk_runtime::hypervisor::find_program("virtiofsd").unwrap_or_else(|| {
        panic!(
            "virtiofsd is not installed (neither in $HUSK_CACHE/bin nor on PATH); \
             `bash scripts/setup.sh` installs virtiofsd 1.14"
        )
    });
    let env = Arc::new(Env { virtiofsd });
    let cases: Vec<husk_e2e::Case<Env>> = vec![(
        "virtiofsd_refuses_names_outside_the_share",
        virtiofsd_refuses_names_outside_the_share,
    )];
    libtest_mimic::run(&args, husk_e2e::trials(&env, cases)).exit();
}

/// A case's deadline: checked between steps, on top of each request's own timeout.
struct Deadline(Instant);

impl Deadline {
    fn start() -> Self {
        Self(Instant::now() + CASE_TIME_BOX)
    }

    fn check(&self, step: &str) -> Result<(), Failed> {
        husk_e2e::check(Instant::now() < self.0, || {
            format!("the case ran past its {CASE_TIME_BOX:?} time box before {step}")
        })
    }
}

/// Host files and directories outside the share that a confined virtiofsd cannot
/// touch: `/tmp/husk-canary-<pid>/{victim,victim-dir}` and `/etc/husk-canary-<pid>`.
/// Everything they and the attacks may create is removed on drop.
struct HostCanaries {
    name: String,
    dir: PathBuf,
    victim_file: PathBuf,
    victim_dir: PathBuf,
    etc_file: PathBuf,
    content: String,
    /// Paths outside the share an attack may have created, removed on drop.
    escape_paths: Vec<PathBuf>,
}

impl HostCanaries {
    fn plant() -> Self {
        let name = format!("husk-canary-{}", std::process::id());
        let dir = Path::new("/tmp").join(&name);
        let canaries = Self {
            victim_file: dir.join("victim"),
            victim_dir: dir.join("victim-dir"),
            etc_file: Path::new("/etc").join(&name),
            dir,
            content: format!("{name}: a hostile guest must not reach this\n"),
            name,
            escape_paths: Vec::new(),
        };
        canaries.restore();
        canaries
    }

    /// Recreates whatever an attack destroyed, so each attack is judged on its own.
    fn restore(&self) {
        std::fs::create_dir_all(&self.victim_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.victim_dir.display()));
        for file in [&self.victim_file, &self.etc_file] {
            std::fs::write(file, &self.content)
                .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        }
    }

    /// What is wrong with the canaries: missing, changed or replaced.
    fn damage(&self) -> Vec<String> {
        let mut damage = Vec::new();
        for file in [&self.victim_file, &self.etc_file] {
            match std::fs::read_to_string(file) {
                Ok(text) if text == self.content => {}
                Ok(_) => damage.push(format!("canary {} was changed", file.display())),
                Err(e) => damage.push(format!("canary {} is gone: {e}", file.display())),
            }
        }
        match std::fs::symlink_metadata(&self.victim_dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => damage.push(format!(
                "canary dir {} was replaced",
                self.victim_dir.display()
            )),
            Err(e) => damage.push(format!(
                "canary dir {} is gone: {e}",
                self.victim_dir.display()
            )),
        }
        damage
    }

    /// A path in the canary dir an attack tries to create, noted for cleanup.
    fn target(&mut self, leaf: &str) -> PathBuf {
        let path = self.dir.join(leaf);
        self.escape_paths.push(path.clone());
        path
    }

    /// A path outside the share (not in the canary dir) an attack could create.
    fn note_escape(&mut self, path: PathBuf) {
        self.escape_paths.push(path);
    }
}

impl Drop for HostCanaries {
    fn drop(&mut self) {
        for path in self.escape_paths.iter().rev() {
            if path.starts_with(&self.dir) {
                continue;
            }
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    let _ = std::fs::remove_dir_all(path);
                }
                Ok(_) => {
                    let _ = std::fs::remove_file(path);
                }
                Err(_) => {}
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.etc_file);
    }
}

/// virtiofsd spawned as husk's qemu backend spawns it: `virtiofsd_args`, working in a
/// state dir of its own (the socket named relative to it), output to a log there, in
/// its own process group, killed if we die. Dropping it kills and reaps it and the
/// process serving for it.
struct VirtiofsdUnderAttack {
    state: tempfile::TempDir,
    process: Background,
}

impl VirtiofsdUnderAttack {
    fn spawn(program: &Path, share: &Path) -> Result<Self, Failed> {
        let state = tempfile::Builder::new()
            .prefix("husk-hostile-state-")
            .tempdir()
            .expect("temp dir");
        let log = std::fs::File::create(state.path().join("virtiofsd.log")).unwrap();
        let mut command = Command::new(program);
        command
            .args(virtiofsd_args(
                Path::new(VIRTIOFS_SOCKET),
                share,
                FsSandbox::for_host(),
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .current_dir(state.path())
            .process_group(0);
        // SAFETY: runs in the forked child before exec and only calls prctl(2), which
        // is async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let virtiofsd = Self {
            process: Background::spawn(&mut command),
            state,
        };
        let socket = virtiofsd.socket();
        if !cmd::wait_until(SOCKET_TIMEOUT, || socket.exists()) {
            return Err(virtiofsd.fail(format!(
                "virtiofsd made no socket {} within {SOCKET_TIMEOUT:?}",
                socket.display()
            )));
        }
        Ok(virtiofsd)
    }

    fn socket(&self) -> PathBuf {
        self.state.path().join(VIRTIOFS_SOCKET)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("virtiofsd.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// A failure carrying virtiofsd's command line and log.
    fn fail(&self, what: String) -> Failed {
        format!(
            "{what}\nvirtiofsd {}\n----- virtiofsd log -----\n{}",
            virtiofsd_args(
                Path::new(VIRTIOFS_SOCKET),
                Path::new("<share>"),
                FsSandbox::for_host()
            )
            .join(" "),
            self.log()
        )
        .into()
    }

    fn children(&self) -> Vec<i32> {
        children_of(self.process.pid())
    }

    /// The process serving the socket: with `--sandbox namespace` virtiofsd forks
    /// and its child serves, in new namespaces; otherwise virtiofsd itself.
    fn serving_pid(&self) -> i32 {
        self.children()
            .first()
            .copied()
            .unwrap_or(self.process.pid())
    }
}

impl Drop for VirtiofsdUnderAttack {
    fn drop(&mut self) {
        // The serving child first, while it is still our child's (so its pid is
        // still its): virtiofsd reaps it, then we kill and reap virtiofsd.
        let children = self.children();
        for child in &children {
            let _ = kill(Pid::from_raw(*child), Signal::SIGKILL);
        }
        cmd::wait_until(Duration::from_secs(5), || {
            children
                .iter()
                .all(|c| !Path::new(&format!("/proc/{c}")).exists())
        });
        // Background's drop kills and reaps virtiofsd itself.
    }
}

/// Children of every thread of `pid` (`/proc/<pid>/task/*/children`).
fn children_of(pid: i32) -> Vec<i32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    children
}

/// Host inode numbers of everything under `dir` (itself included). The share and
/// the canaries are on one file system here (/tmp), so an inode number names a file.
fn inodes_under(dir: &Path) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        inodes.insert(meta.st_ino());
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(entry.path());
            }
        }
    }
    inodes
}

/// (device, inode) of everything under `dir`, for judging virtiofsd's descriptors.
fn files_under(dir: &Path) -> HashSet<(u64, u64)> {
    let mut files = HashSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        files.insert((meta.st_dev(), meta.st_ino()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                stack.push(entry.path());
            }
        }
    }
    files
}

/// What an attack's reply must be.
#[derive(Clone, Copy)]
enum Expect {
    /// An error: the name reaches outside the share.
    Refused,
    /// An error, or an entry inside the share: in a sandbox whose root is the share,
    /// ".." of the root is the root, as in any chroot.
    RefusedOrInsideShare,
}

/// One attack's result, for the report.
struct Verdict {
    attack: String,
    outcome: String,
    problems: Vec<String>,
}

/// The share, the canaries and the session under attack, and what happened so far.
struct Attacker {
    share: tempfile::TempDir,
    canaries: HostCanaries,
    session: FuseSession,
    verdicts: Vec<Verdict>,
}

impl Attacker {
    /// Sends one attack and judges it: the reply (against `expect`), the canaries,
    /// and each of `escapes` (paths outside the share it must not have created).
    fn attack(
        &mut self,
        attack: String,
        expect: Expect,
        escapes: Vec<PathBuf>,
        send: impl FnOnce(&mut FuseSession) -> Result<FuseReply, FuseClientError>,
    ) -> Result<FuseReply, Failed> {
        for path in &escapes {
            if !path.starts_with(&self.canaries.dir) {
                self.canaries.note_escape(path.clone());
            }
        }
        let mut problems = Vec::new();
        // A closed connection or a dead daemon is not a refusal: fail the case.
        let reply = send(&mut self.session)
            .map_err(|e| format!("{attack}: the request failed below FUSE: {e}"))?;
        let outcome = reply.outcome();
        match (expect, reply.errno(), reply.entry()) {
            (_, Some(_), _) => {}
            (Expect::RefusedOrInsideShare, None, Some(entry))
                if inodes_under(self.share.path()).contains(&entry.ino) => {}
            (Expect::RefusedOrInsideShare, None, Some(entry)) => problems.push(format!(
                "succeeded with host inode {}, which is not in the share",
                entry.ino
            )),
            (_, None, _) => problems.push("succeeded: a name outside the share was served".into()),
        }
        problems.extend(self.canaries.damage());
        for path in &escapes {
            if std::fs::symlink_metadata(path).is_ok() {
                problems.push(format!("{} was created outside the share", path.display()));
            }
        }
        self.canaries.restore();
        self.verdicts.push(Verdict {
            attack,
            outcome,
            problems,
        });
        Ok(reply)
    }

    fn report(&self) -> (String, bool) {
        let mut report = String::new();
        let mut harmed = false;
        for verdict in &self.verdicts {
            let _ = writeln!(report, "  {} -> {}", verdict.attack, verdict.outcome);
            for problem in &verdict.problems {
                harmed = true;
                let _ = writeln!(report, "      HOST HARMED: {problem}");
            }
        }
        (report, harmed)
    }
}

/// The four ways to create a name, each sent with an absolute name and with a name
/// containing '/'.
#[derive(Clone, Copy)]
enum Creation {
    Mkdir,
    MknodFifo,
    Symlink,
    Create,
}

impl Creation {
    const ALL: [Self; 4] = [Self::Mkdir, Self::MknodFifo, Self::Symlink, Self::Create];

    fn opcode(self) -> &'static str {
        match self {
            Self::Mkdir => "MKDIR",
            Self::MknodFifo => "MKNOD (fifo)",
            Self::Symlink => "SYMLINK (-> /etc/shadow)",
            Self::Create => "CREATE",
        }
    }

    fn leaf(self) -> &'static str {
        match self {
            Self::Mkdir => "planted-dir",
            Self::MknodFifo => "planted-fifo",
            Self::Symlink => "planted-symlink",
            Self::Create => "planted-file",
        }
    }

    fn send(
        self,
        session: &mut FuseSession,
        parent: u64,
        name: &[u8],
    ) -> Result<FuseReply, FuseClientError> {
        match self {
            Self::Mkdir => session.mkdir(parent, name),
            Self::MknodFifo => session.mknod_fifo(parent, name),
            Self::Symlink => session.symlink(parent, name, b"/etc/shadow"),
            Self::Create => session.create(parent, name),
        }
    }
}

fn bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

fn virtiofsd_refuses_names_outside_the_share(env: &Env) -> Result<(), Failed> {
    let deadline = Deadline::start();
    let share = tempfile::Builder::new()
        .prefix("husk-hostile-share-")
        .tempdir()
        .expect("temp dir");
    std::fs::create_dir(share.path().join("subdir")).unwrap();
    std::fs::write(share.path().join("rename-me"), "in the share\n").unwrap();
    std::fs::write(share.path().join("link-source"), "in the share\n").unwrap();
    let canaries = HostCanaries::plant();
    let virtiofsd = VirtiofsdUnderAttack::spawn(&env.virtiofsd, share.path())?;
    let session = FuseSession::connect(&virtiofsd.socket(), REQUEST_TIMEOUT)
        .map_err(|e| virtiofsd.fail(format!("vhost-user setup or FUSE_INIT failed: {e}")))?;
    let mut attacker = Attacker {
        share,
        canaries,
        session,
        verdicts: Vec::new(),
    };
    let result = attack_everything(&mut attacker, &deadline)
        .and_then(|()| check_confinement(&virtiofsd, &attacker));
    let (report, harmed) = attacker.report();
    eprintln!(
        "virtiofsd under attack ({}):\n{report}",
        virtiofsd_args(
            Path::new(VIRTIOFS_SOCKET),
            Path::new("<share>"),
            FsSandbox::for_host()
        )
        .join(" ")
    );
    if let Ok(confinement) = &result {
        eprintln!("  confinement: {confinement}");
    }
    match result {
        Err(e) => Err(virtiofsd.fail(format!(
            "{}\nattacks so far:\n{report}",
            e.message().unwrap_or("(no message)")
        ))),
        Ok(_) if harmed => Err(virtiofsd.fail(format!(
            "a hostile guest's FUSE requests reached the host outside the share:\n{report}"
        ))),
        Ok(_) => Ok(()),
    }
}

fn attack_everything(attacker: &mut Attacker, deadline: &Deadline) -> Result<(), Failed> {
    let share = attacker.share.path().to_path_buf();
    let share_parent = share
        .parent()
        .expect("a temp dir has a parent")
        .to_path_buf();
    let name = attacker.canaries.name.clone();

    deadline.check("LOOKUP \"/etc\"")?;
    attacker.attack(
        "LOOKUP \"/etc\" in the share's root".into(),
        Expect::Refused,
        vec![],
        |s| s.lookup(ROOT_NODE, b"/etc"),
    )?;

    deadline.check("LOOKUP \"..\"")?;
    attacker.attack(
        "LOOKUP \"..\" in the share's root".into(),
        Expect::RefusedOrInsideShare,
        vec![],
        |s| s.lookup(ROOT_NODE, b".."),
    )?;

    deadline.check("UNLINK")?;
    let etc_file = bytes(&attacker.canaries.etc_file);
    attacker.attack(
        format!("UNLINK {:?}", attacker.canaries.etc_file),
        Expect::Refused,
        vec![],
        |s| s.unlink(ROOT_NODE, &etc_file),
    )?;

    deadline.check("RMDIR")?;
    let victim_dir = bytes(&attacker.canaries.victim_dir);
    attacker.attack(
        format!("RMDIR {:?}", attacker.canaries.victim_dir),
        Expect::Refused,
        vec![],
        |s| s.rmdir(ROOT_NODE, &victim_dir),
    )?;

    for creation in Creation::ALL {
        deadline.check(creation.opcode())?;
        let target = attacker.canaries.target(creation.leaf());
        let absolute = bytes(&target);
        attacker.attack(
            format!("{} {target:?}", creation.opcode()),
            Expect::Refused,
            vec![target.clone()],
            |s| creation.send(s, ROOT_NODE, &absolute),
        )?;

        // A relative name with '/': from the share's root up into its parent.
        let leaf = format!("{name}-dotdot-{}", creation.leaf());
        let slashed = format!("subdir/../../{leaf}");
        attacker.attack(
            format!("{} {slashed:?} in the share's root", creation.opcode()),
            Expect::RefusedOrInsideShare,
            vec![share_parent.join(&leaf)],
            |s| creation.send(s, ROOT_NODE, slashed.as_bytes()),
        )?;
    }

    deadline.check("RENAME")?;
    let renamed = attacker.canaries.target("planted-by-rename");
    let renamed_name = bytes(&renamed);
    attacker.attack(
        format!("RENAME share/rename-me -> {renamed:?}"),
        Expect::Refused,
        vec![renamed.clone()],
        |s| s.rename(ROOT_NODE, b"rename-me", ROOT_NODE, &renamed_name),
    )?;
    if !share.join("rename-me").exists() {
        // Moved out of the share (already reported): put it back for what follows.
        std::fs::write(share.join("rename-me"), "in the share\n").unwrap();
    }

    deadline.check("LINK")?;
    let source = attacker
        .session
        .lookup(ROOT_NODE, b"link-source")
        .map_err(|e| format!("LOOKUP link-source: {e}"))?;
    let source = source
        .entry()
        .ok_or_else(|| format!("LOOKUP link-source in the share: {}", source.outcome()))?;
    let linked = attacker.canaries.target("planted-by-link");
    let linked_name = bytes(&linked);
    attacker.attack(
        format!("LINK share/link-source -> {linked:?}"),
        Expect::Refused,
        vec![linked.clone()],
        |s| s.link(source.node, ROOT_NODE, &linked_name),
    )?;

    // Walk up: LOOKUP ".." from the root, then from what that returned, and so on;
    // then CREATE where the walk ended. Confined, the walk never leaves the root.
    let mut node = ROOT_NODE;
    for climb in 1..=DOTDOT_CLIMBS {
        deadline.check("the \"..\" walk")?;
        let reply = attacker.attack(
            format!("LOOKUP \"..\" climb {climb} (from node {node})"),
            Expect::RefusedOrInsideShare,
            vec![],
            |s| s.lookup(node, b".."),
        )?;
        match reply.entry() {
            Some(entry) => node = entry.node,
            None => break,
        }
    }
    let walked = format!("{name}-walked");
    let mut escapes: Vec<PathBuf> = share.ancestors().skip(1).map(|a| a.join(&walked)).collect();
    escapes.dedup();
    deadline.check("CREATE after the walk")?;
    attacker.attack(
        format!("CREATE {walked:?} where the \"..\" walk ended (node {node})"),
        Expect::RefusedOrInsideShare,
        escapes,
        |s| s.create(node, walked.as_bytes()),
    )?;
    Ok(())
}

/// virtiofsd's serving process is confined: its root is not the host's, and it holds
/// no directory or regular file outside the share and its state dir. Returns what it
/// looked at, for the report.
fn check_confinement(
    virtiofsd: &VirtiofsdUnderAttack,
    attacker: &Attacker,
) -> Result<String, Failed> {
    let pid = virtiofsd.serving_pid();
    let mut problems = Vec::new();

    let host_root = std::fs::metadata("/").expect("stat /");
    let its_root = std::fs::metadata(format!("/proc/{pid}/root"))
        .map_err(|e| format!("stat /proc/{pid}/root: {e}"))?;
    if (its_root.st_dev(), its_root.st_ino()) == (host_root.st_dev(), host_root.st_ino()) {
        problems.push(format!(
            "virtiofsd (pid {pid})'s root is the host's / (/proc/{pid}/root is dev {} ino {})",
            its_root.st_dev(),
            its_root.st_ino()
        ));
    }

    let mut allowed = files_under(attacker.share.path());
    allowed.extend(files_under(virtiofsd.state.path()));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("list /proc/{pid}/fd: {e}"))?;
    let mut checked = 0;
    for fd in fds.flatten() {
        checked += 1;
        let link = std::fs::read_link(fd.path()).unwrap_or_default();
        let text = link.display().to_string();
        // Guest memory and other anonymous files are not host paths.
        if text.starts_with("/memfd:") {
            continue;
        }
        let Ok(meta) = std::fs::metadata(fd.path()) else {
            continue;
        };
        if !(meta.is_dir() || meta.is_file()) || on_procfs(&fd.path()) {
            continue;
        }
        if !allowed.contains(&(meta.st_dev(), meta.st_ino())) {
            problems.push(format!(
                "virtiofsd (pid {pid}) holds fd {} on host {} {text}, outside the share and its state dir",
                fd.file_name().to_string_lossy(),
                if meta.is_dir() { "directory" } else { "file" },
            ));
        }
    }
    husk_e2e::check(problems.is_empty(), || {
        format!(
            "virtiofsd is not confined to the share:\n  {}",
            problems.join("\n  ")
        )
    })?;
    Ok(format!(
        "serving pid {pid} (virtiofsd pid {}): root dev {} ino {} (host / is dev {} ino {}); \
         {checked} descriptors, none on a host directory or file outside the share",
        virtiofsd.process.pid(),
        its_root.st_dev(),
        its_root.st_ino(),
        host_root.st_dev(),
        host_root.st_ino()
    ))
}

/// Whether `path` (a /proc/<pid>/fd link, followed) is on a procfs: virtiofsd keeps
/// /proc/self/fd open by design.
fn on_procfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}
