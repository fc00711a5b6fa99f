/**
 * A real OpenSSH server for tests: `/usr/sbin/sshd` on a free loopback port, with a fresh host
 * key and a fresh user key allowed to log in as the current user, all in a temp dir.
 */
import { execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { Data, Effect, Schedule, type Scope } from "effect"
import * as FreePort from "../../infra/net/FreePort.js"
import { tempDir } from "./TempDir.js"
import * as Processes from "./Processes.js"

/** A running sshd and the files a client needs to reach it. */
export interface Sshd {
  readonly host: string
  readonly port: number
  /** The user the tests log in as: the one running them. */
  readonly user: string
  readonly dir: string
  /** A private key (no passphrase) that sshd accepts for `user`. */
  readonly userKeyPath: string
  /** The host's public key line, `ssh-ed25519 AAAA…`. */
  readonly hostPublicKey: string
  /** `SHA256:…` of the host key, as `ssh-keygen -l` prints it. */
  readonly hostKeyFingerprint: string
  /** A known_hosts file holding `[127.0.0.1]:<port> <host key>`. */
  readonly knownHostsPath: string
  /** A known_hosts file with no entries. */
  readonly emptyKnownHostsPath: string
}

const sshdPath = "/usr/sbin/sshd"

/** Runs a program to completion and yields its stdout. */
export const run = (file: string, args: ReadonlyArray<string>): Effect.Effect<string, Error> =>
  Effect.async<string, Error>((resume) => {
    const child = execFile(file, [...args], { encoding: "utf8" }, (error, stdout, stderr) =>
      resume(
        error === null
          ? Effect.succeed(stdout)
          : Effect.fail(new Error(`${file} ${args.join(" ")} failed: ${error.message}\n${stderr}`))
      )
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/**
 * A new ed25519 key pair at `keyPath` (and `keyPath.pub`); yields the public key line. A passphrase
 * is stretched with one bcrypt round only, so that decrypting it stays fast.
 */
export const generateKey = (keyPath: string, passphrase = ""): Effect.Effect<string, Error> =>
  run("ssh-keygen", [
    "-q",
    "-t",
    "ed25519",
    "-a",
    "1",
    "-N",
    passphrase,
    "-C",
    "vibes-test",
    "-f",
    keyPath
  ]).pipe(Effect.zipRight(Effect.sync(() => fs.readFileSync(`${keyPath}.pub`, "utf8").trim())))

class SshdExited extends Data.TaggedError("SshdExited")<{ readonly message: string }> {}

/** Connects to `port` and waits for the server's `SSH-2.0` banner. */
const readBanner = (port: number): Effect.Effect<void, Error> =>
  Effect.async<void, Error>((resume) => {
    const socket = net.connect({ host: "127.0.0.1", port })
    let received = ""
    socket.on("data", (data) => {
      received += data.toString("latin1")
      if (received.includes("SSH-2.0")) {
        socket.destroy()
        resume(Effect.void)
      }
    })
    socket.on("error", (error) => resume(Effect.fail(error)))
    socket.on("close", () => resume(Effect.fail(new Error(`no SSH banner on port ${port}: ${received}`))))
    return Effect.sync(() => socket.destroy())
  })

const config = (dir: string) =>
  [
    "ListenAddress 127.0.0.1",
    `HostKey ${path.join(dir, "host_ed25519")}`,
    `AuthorizedKeysFile ${path.join(dir, "authorized_keys")}`,
    `PidFile ${path.join(dir, "sshd.pid")}`,
    "StrictModes no",
    "UsePAM no",
    "PermitRootLogin yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PrintMotd no",
    "Subsystem sftp internal-sftp",
    // bash sources ~/.bashrc for commands run by sshd unless it is a nested shell; on dev images
    // that file can take a second (pyenv init), which every test would pay.
    "SetEnv SHLVL=1",
    ""
  ].join("\n")

/** Starts sshd on a free port and waits until it answers; stops it when the scope closes. */
const launch = (dir: string): Effect.Effect<number, Error, Scope.Scope> =>
  Effect.gen(function* () {
    const port = yield* FreePort.find()
    const child = yield* Processes.scopedChild(
      () =>
        spawn(sshdPath, ["-D", "-e", "-f", path.join(dir, "sshd_config"), "-p", String(port)], {
          stdio: ["ignore", "ignore", "pipe"]
        }),
      "5 seconds"
    )
    let log = ""
    child.stderr.on("data", (data: Buffer) => {
      if (log.length < 64 * 1024) log += data.toString("utf8")
    })
    const exited = () =>
      child.exitCode !== null || child.signalCode !== null
        ? Effect.fail(
            new SshdExited({ message: `sshd exited (${child.exitCode ?? child.signalCode}):\n${log}` })
          )
        : Effect.void
    yield* exited().pipe(
      Effect.zipRight(readBanner(port)),
      Effect.retry({
        schedule: Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds")),
        while: (error) => !(error instanceof SshdExited)
      }),
      Effect.mapError((error) => new Error(`sshd did not start on port ${port}: ${error.message}\n${log}`))
    )
    return port
  })

/** An ssh-agent holding the key at `keyPath`, stopped with the scope; yields its socket path. */
export const startAgent = (dir: string, keyPath: string): Effect.Effect<string, Error, Scope.Scope> =>
  Effect.gen(function* () {
    const socket = path.join(dir, "agent.sock")
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => spawn("ssh-agent", ["-D", "-a", socket], { stdio: ["ignore", "pipe", "inherit"] })),
      (child) => Effect.sync(() => child.kill("SIGKILL"))
    )
    // ssh-agent prints its environment once the socket listens.
    yield* Effect.async<void, Error>((resume) => {
      child.stdout.once("data", () => resume(Effect.void))
      child.once("exit", (code) => resume(Effect.fail(new Error(`ssh-agent exited with ${code}`))))
    }).pipe(Effect.timeout("10 seconds"))
    yield* Effect.async<void, Error>((resume) => {
      execFile("ssh-add", ["-q", keyPath], { env: { ...process.env, SSH_AUTH_SOCK: socket } }, (error) =>
        resume(error === null ? Effect.void : Effect.fail(error))
      )
    })
    return socket
  })

/** A running sshd for the scope's lifetime. */
export const start: Effect.Effect<Sshd, Error, Scope.Scope> = Effect.gen(function* () {
  if (!fs.existsSync(sshdPath)) {
    return yield* Effect.fail(
      new Error(`${sshdPath} is missing; install it with apt-get install -y openssh-server`)
    )
  }
  // sshd's privilege separation directory.
  yield* Effect.sync(() => fs.mkdirSync("/run/sshd", { recursive: true, mode: 0o755 }))
  const dir = yield* tempDir("vibes-sshd-")
  const hostPublicKey = yield* generateKey(path.join(dir, "host_ed25519"))
  const userKeyPath = path.join(dir, "user_ed25519")
  const userPublicKey = yield* generateKey(userKeyPath)
  const fingerprintLine = yield* run("ssh-keygen", [
    "-l",
    "-E",
    "sha256",
    "-f",
    path.join(dir, "host_ed25519.pub")
  ])
  const hostKeyFingerprint = fingerprintLine.split(" ")[1] ?? ""
  yield* Effect.sync(() => {
    fs.writeFileSync(path.join(dir, "authorized_keys"), `${userPublicKey}\n`, { mode: 0o600 })
    fs.writeFileSync(path.join(dir, "sshd_config"), config(dir))
    fs.writeFileSync(path.join(dir, "empty_known_hosts"), "")
  })
  // Another process may take the free port before sshd binds it.
  const port = yield* launch(dir).pipe(Effect.retry({ times: 2 }))
  const knownHostsPath = path.join(dir, "known_hosts")
  yield* Effect.sync(() => fs.writeFileSync(knownHostsPath, `[127.0.0.1]:${port} ${hostPublicKey}\n`))
  return {
    host: "127.0.0.1",
    port,
    user: os.userInfo().username,
    dir,
    userKeyPath,
    hostPublicKey,
    hostKeyFingerprint,
    knownHostsPath,
    emptyKnownHostsPath: path.join(dir, "empty_known_hosts")
  }
})
