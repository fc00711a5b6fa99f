/**
 * How session and job programs are kept away from the server and from one another. Each runs in
 * mount and PID namespaces of its own (`unshare`, with a small Perl init that reports how the
 * program ended): an empty tmpfs covers the data dir, and its `/proc` shows only its own
 * processes. When vibes runs as root, programs run as an unprivileged user (`VIBES_RUN_AS`,
 * default `vibes`, created when missing) through `setpriv`, with that user's HOME, and the data
 * dir (admin token, keys, the PTY host's socket) is root's alone (0700). As an ordinary user,
 * programs run as the server's own user, the namespaces in a user namespace of their own. Where
 * the machine refuses the namespaces, the user switch (root) or the clean environment (see
 * `ChildEnv`) is all, with a warning.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import { Duration, Effect, Schema } from "effect"

/** The sandbox cannot be set up as configured; the server does not start. */
export class SandboxError extends Schema.TaggedError<SandboxError>()("SandboxError", {
  message: Schema.String
}) {}

/**
 * `VIBES_SANDBOX`: `auto` runs programs as the run-as user when the server is root, else in
 * namespaces of their own that hide the data dir and the server's processes where the machine
 * allows them (as the server's user, with a warning, where it does not); `namespaces` is `auto`
 * that refuses to start without them; `off` runs programs as the server's user, unhidden. In
 * every mode their environment holds no secret.
 */
export const SandboxMode = Schema.Literal("auto", "namespaces", "off")
export type SandboxMode = typeof SandboxMode.Type

/** The account programs run as. */
export interface RunAs {
  readonly name: string
  readonly uid: number
  readonly gid: number
  readonly home: string
  readonly shell: string
}

/** How this server starts programs. */
export type Sandbox =
  | { readonly _tag: "SameUser" }
  | {
      readonly _tag: "RunAs"
      readonly user: RunAs
      /** The argv prefix that starts a program as `user`. */
      readonly wrapper: ReadonlyArray<string>
    }
  | {
      readonly _tag: "Namespaces"
      /** The argv prefix that starts a program in namespaces of its own. */
      readonly wrapper: ReadonlyArray<string>
    }

/** Programs run as the server's user. */
export const sameUser: Sandbox = { _tag: "SameUser" }

/** Where a created run-as user's home goes. */
export const defaultHome = "/var/lib/vibes-run"

/** The argv prefix of a program, empty when programs run as the server's user. */
export const wrapper = (sandbox: Sandbox): ReadonlyArray<string> =>
  sandbox._tag === "SameUser" ? [] : sandbox.wrapper

/** The variables that name the account a program runs as (none for the server's own). */
export const identityEnv = (sandbox: Sandbox): Record<string, string> =>
  sandbox._tag === "RunAs"
    ? {
        HOME: sandbox.user.home,
        USER: sandbox.user.name,
        LOGNAME: sandbox.user.name,
        SHELL: sandbox.user.shell
      }
    : {}

const passwdEntry = (name: string): RunAs | undefined => {
  try {
    const line = childProcess.execFileSync("getent", ["passwd", name], { encoding: "utf8" }).trim()
    const [user, , uid, gid, , home, shell] = line.split(":")
    if (user === undefined || uid === undefined || gid === undefined || home === undefined) return undefined
    return { name: user, uid: Number(uid), gid: Number(gid), home, shell: shell ?? "/bin/sh" }
  } catch {
    return undefined
  }
}

const findSetpriv = (): string | undefined =>
  ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv", "/sbin/setpriv"].find((file) => {
    try {
      fs.accessSync(file, fs.constants.X_OK)
      return true
    } catch {
      return false
    }
  })

const messageOf = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/**
 * The process vibes starts (outside the namespaces). It starts the namespaces with a pipe as their
 * fd 3, then ends the way the program ended, the moment the program does: with its exit code, or
 * killed by its signal. Signals reach the program through the process groups vibes signals: a
 * job's, which the program shares, and a terminal's foreground group, which it leads. This process
 * ignores the ones that would end it before it could tell how the program ended, except that as a
 * terminal's session leader it passes the terminal's hangup on to the program's group.
 */
const namespaceOuter = String.raw`
use strict; use POSIX ();
$^F = 3; # fd 3 stays open across exec
pipe(my $r, my $w) or exit 126;
my $pid = fork() // exit 126;
if ($pid == 0) {
  close $r;
  POSIX::dup2(fileno($w), 3) // exit 126;
  $SIG{$_} = "IGNORE" for qw(HUP INT QUIT TERM);
  exec { $ARGV[0] } @ARGV or exit 126;
}
close $w;
my @groups;
$SIG{$_} = "IGNORE" for qw(INT QUIT TERM);
$SIG{HUP} = sub {
  my @to = grep { $_ > 0 && $_ != getpgrp() } @groups, POSIX::tcgetpgrp(0);
  kill "HUP", map { -$_ } @to if @to;
};
my $end = "";
for (;;) {
  $! = 0;
  my $line = <$r>;
  if (!defined $line) { next if $!{EINTR}; last }
  chomp $line;
  if ($line eq "started") { push @groups, POSIX::tcgetpgrp(0); next }
  $end = $line;
  last;
}
if ($end !~ /^(exit|signal) ([0-9]+)$/) {
  waitpid($pid, 0);
  $end = ($? & 127) ? "signal " . ($? & 127) : "exit " . ($? >> 8);
} else {
  # unshare ends with the namespaces, at once unless the program left processes running: reaped
  # here, it does not linger as a zombie in the process group until the system's init reaps it.
  for (1 .. 40) { last if waitpid($pid, POSIX::WNOHANG()) != 0; select(undef, undef, undef, 0.005) }
}
my ($how, $n) = split / /, $end;
exit $n if $how eq "exit";
POSIX::sigaction($n, POSIX::SigAction->new("DEFAULT"));
POSIX::sigprocmask(POSIX::SIG_UNBLOCK(), POSIX::SigSet->new($n));
kill $n, $$;
exit 128 + $n;
`

/**
 * The namespaces' init (their PID 1, as their root): hides the data dir under an empty tmpfs (and
 * each other secret path: a file under /dev/null, a directory under an empty tmpfs),
 * starts the program through the argv prefix that makes it its user again (a nested user
 * namespace under an ordinary user's server, setpriv under root's) as its child (PID 1
 * would ignore every signal it has no handler for), reports on fd 3 how the program ended the
 * moment it does, and reaps the namespace's processes until none is left: what the program left
 * running keeps running (until its process group's SIGKILL), as it would without namespaces. On a
 * terminal, the program leads the foreground process group, one of the namespace's own (a shell
 * gives the terminal back to the group it started in when it exits, and fails if it cannot).
 */
const namespaceInit = String.raw`
use strict; use POSIX ();
my ($dir, $count, @cmd) = @ARGV;
my @hidden = splice(@cmd, 0, $count);
my $report;
open($report, ">&=", 3) or undef $report;
system("mount", "-t", "tmpfs", "-o", "mode=0755,size=4k", "vibes-hidden", $dir) == 0 or exit 126;
for my $path (@hidden) {
  next unless -e $path;
  if (-d $path) {
    system("mount", "-t", "tmpfs", "-o", "mode=0755,size=4k", "vibes-hidden", $path) == 0 or exit 126;
  } else {
    system("mount", "--bind", "/dev/null", $path) == 0 or exit 126;
  }
}
my $pid = fork() // exit 126;
if ($pid == 0) {
  if (-t STDIN) {
    POSIX::setpgid(0, 0);
    $SIG{TTOU} = "IGNORE";
    POSIX::tcsetpgrp(0, POSIX::getpid());
    syswrite($report, "started\n") if $report;
  }
  POSIX::close(3);
  $SIG{$_} = "DEFAULT" for qw(HUP INT QUIT TERM TTOU);
  exec { $cmd[0] } @cmd or exit 127;
}
while ((my $done = waitpid(-1, 0)) > 0) {
  next unless $done == $pid && defined $report;
  my $end = ($? & 127) ? "signal " . ($? & 127) : "exit " . ($? >> 8);
  syswrite($report, "$end\n");
  close $report;
  undef $report;
}
exit 0;
`

/**
 * The argv prefix that runs a program in mount and PID namespaces of its own with `dataDir`
 * hidden, through `drop`, the argv prefix that (inside) makes it its user. Under an ordinary user
 * they need a user namespace of their own, whose root maps to that user.
 */
const inNamespaces = (
  dataDir: string,
  hidden: ReadonlyArray<string>,
  drop: ReadonlyArray<string>,
  userNamespace: boolean
): ReadonlyArray<string> => [
  "perl",
  "-e",
  namespaceOuter,
  "unshare",
  ...(userNamespace ? ["--user", "--map-root-user"] : []),
  "--mount",
  "--pid",
  "--fork",
  "--mount-proc",
  "--kill-child",
  "--",
  "perl",
  "-e",
  namespaceInit,
  dataDir,
  String(hidden.length),
  ...hidden,
  ...drop
]

/**
 * The argv prefix of an ordinary user's namespace sandbox for `dataDir` (programs as `uid`:`gid`),
 * with the `hidden` paths (absolute) hidden too.
 */
export const namespaceWrapper = (
  dataDir: string,
  uid: number,
  gid: number,
  hidden: ReadonlyArray<string> = []
): ReadonlyArray<string> =>
  inNamespaces(dataDir, hidden, ["unshare", "--user", `--map-user=${uid}`, `--map-group=${gid}`, "--"], true)

/** The argv prefix of a root server's sandbox: namespaces, and `setpriv` to the run-as user. */
export const rootNamespaceWrapper = (
  dataDir: string,
  setpriv: ReadonlyArray<string>,
  hidden: ReadonlyArray<string> = []
): ReadonlyArray<string> => inNamespaces(dataDir, hidden, setpriv, false)

/** Whether `wrapper` runs a program here (the kernel may refuse the namespaces, a tool may be missing). */
const wrapperWorks = (wrapper: ReadonlyArray<string>): boolean => {
  const [file, ...args] = wrapper
  try {
    childProcess.execFileSync(file ?? "perl", [...args, "/bin/true"], { stdio: "ignore", timeout: 10_000 })
    return true
  } catch {
    return false
  }
}

/** Creates system user `name` with home `home` (throws with useradd's message when it fails). */
const useradd = (name: string, home: string): void => {
  childProcess.execFileSync(
    "useradd",
    ["--system", "--create-home", "--home-dir", home, "--shell", "/bin/bash", name],
    {
      stdio: ["ignore", "ignore", "pipe"]
    }
  )
}

/** How often a failed useradd is tried again (another process may hold the passwd lock). */
const createAttempts = 5

/**
 * The run-as user `name`, created (a system user with home `home`) when missing. Several servers
 * starting at once on one machine race to create it: a useradd that fails because another made
 * the user meanwhile (or held the passwd lock) is not an error once the user exists.
 */
export const ensureUser = (
  name: string,
  options: { readonly home?: string; readonly create?: (name: string, home: string) => void } = {}
): Effect.Effect<RunAs, SandboxError> =>
  Effect.gen(function* () {
    const usable = (entry: RunAs) =>
      entry.uid === 0
        ? Effect.fail(
            new SandboxError({
              message: `VIBES_RUN_AS names ${name}, which is root (uid 0); name an unprivileged user, or set VIBES_SANDBOX=off`
            })
          )
        : Effect.succeed(entry)
    const existing = passwdEntry(name)
    if (existing !== undefined) return yield* usable(existing)
    const create = options.create ?? useradd
    const home = options.home ?? defaultHome
    let failure = ""
    for (let attempt = 1; attempt <= createAttempts; attempt++) {
      const created = yield* Effect.try({
        try: () => create(name, home),
        catch: messageOf
      }).pipe(Effect.either)
      const entry = passwdEntry(name)
      if (entry !== undefined) {
        if (created._tag === "Right") {
          yield* Effect.logInfo(`created the user ${name} (uid ${entry.uid}) that sessions and jobs run as`)
        }
        return yield* usable(entry)
      }
      failure = created._tag === "Left" ? created.left : "useradd succeeded but the user is not there"
      if (attempt < createAttempts) yield* Effect.sleep(Duration.millis(100 * attempt))
    }
    return yield* new SandboxError({
      message: `cannot create the user ${name} that sessions and jobs run as (${failure}); create it, name another with VIBES_RUN_AS, or set VIBES_SANDBOX=off`
    })
  })

/**
 * The sandbox for a server running as this process's user with `dataDir`: as root, programs run
 * as `runAs` and the data dir is made root's alone; otherwise as the server's user.
 */
export const make = (options: {
  readonly mode: SandboxMode
  readonly runAs: string
  readonly dataDir: string
  /** Other paths that hold the server's secrets (provider key files): hidden like the data dir. */
  readonly hidden?: ReadonlyArray<string>
}): Effect.Effect<Sandbox, SandboxError> =>
  Effect.gen(function* () {
    if (options.mode === "off") return sameUser
    if (process.getuid?.() !== 0) {
      const wrapper = namespaceWrapper(
        options.dataDir,
        process.getuid?.() ?? 0,
        process.getgid?.() ?? 0,
        options.hidden ?? []
      )
      if (wrapperWorks(wrapper)) return { _tag: "Namespaces", wrapper } satisfies Sandbox
      const why =
        "this machine cannot make unprivileged user namespaces (unshare --user failed, or perl or util-linux's unshare is missing)"
      // Asked for explicitly: refuse to start rather than run without it.
      if (options.mode === "namespaces") {
        return yield* new SandboxError({
          message: `VIBES_SANDBOX=namespaces, but ${why}; allow them, run vibes as root, or set VIBES_SANDBOX=auto`
        })
      }
      yield* Effect.logWarning(
        `${why}: sessions and jobs run as this server's user, unhidden, and can read its data dir (the admin token); allow user namespaces, or run vibes as root, to keep them out`
      )
      return sameUser
    }
    const setpriv = findSetpriv()
    if (setpriv === undefined) {
      return yield* new SandboxError({
        message:
          "running as root, vibes starts sessions and jobs as VIBES_RUN_AS through setpriv (util-linux), which is not installed; install it, or set VIBES_SANDBOX=off"
      })
    }
    const user = yield* ensureUser(options.runAs)
    yield* Effect.try({
      try: () => {
        if (!fs.existsSync(user.home)) {
          fs.mkdirSync(user.home, { recursive: true, mode: 0o700 })
          fs.chownSync(user.home, user.uid, user.gid)
        }
        // The admin token, key files, the PTY host's socket: nothing in here is for programs.
        fs.mkdirSync(options.dataDir, { recursive: true, mode: 0o700 })
        if (fs.statSync(options.dataDir).uid !== 0) fs.chownSync(options.dataDir, 0, 0)
        fs.chmodSync(options.dataDir, 0o700)
      },
      catch: (cause) => new SandboxError({ message: `cannot prepare the sandbox: ${messageOf(cause)}` })
    })
    const asUser = [
      setpriv,
      `--reuid=${user.uid}`,
      `--regid=${user.gid}`,
      "--init-groups",
      "--no-new-privs",
      "--"
    ]
    // In namespaces of its own, a program cannot see or trace the other sessions' and jobs'
    // processes (they all run as the one run-as user). Containers often refuse them (no
    // CAP_SYS_ADMIN): then the user switch alone, with a warning.
    const wrapper = rootNamespaceWrapper(options.dataDir, asUser, options.hidden ?? [])
    if (wrapperWorks(wrapper)) return { _tag: "RunAs", user, wrapper } satisfies Sandbox
    if (options.mode === "namespaces") {
      return yield* new SandboxError({
        message:
          "VIBES_SANDBOX=namespaces, but this machine refuses mount and PID namespaces to root (a container without CAP_SYS_ADMIN?), or perl or util-linux's unshare is missing; allow them, or set VIBES_SANDBOX=auto"
      })
    }
    yield* Effect.logWarning(
      `this machine refuses mount and PID namespaces to root (a container without CAP_SYS_ADMIN?), or perl or util-linux's unshare is missing: sessions and jobs run as ${user.name} without them, and can see, signal and trace one another's processes`
    )
    return { _tag: "RunAs", user, wrapper: asUser } satisfies Sandbox
  })
