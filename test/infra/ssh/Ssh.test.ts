import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Effect, Fiber, Layer, Option, Redacted, Schedule, Stream } from "effect"
import * as FreePort from "../../../infra/net/FreePort.js"
import * as KnownHosts from "../../../infra/ssh/KnownHosts.js"
import * as Ssh from "../../../infra/ssh/Ssh.js"
import * as Sshd from "../../support/Sshd.js"
import { tempDir } from "../../support/TempDir.js"

class TestSshd extends Context.Tag("test/Sshd")<TestSshd, Sshd.Sshd>() {}

const noExtras: Ssh.ExecExtras = { env: {}, cwd: Option.none() }

const optionsFor = (sshd: Sshd.Sshd, overrides: Partial<Ssh.ConnectOptions> = {}): Ssh.ConnectOptions => ({
  host: sshd.host,
  port: sshd.port,
  user: sshd.user,
  auth: { _tag: "KeyFile", path: sshd.userKeyPath, passphrase: Option.none() },
  knownHostsPath: sshd.knownHostsPath,
  trustHostKey: Option.none(),
  keepaliveInterval: "15 seconds",
  keepaliveCountMax: 3,
  readyTimeout: "10 seconds",
  ...overrides
})

const text = <E>(stream: Stream.Stream<Uint8Array, E>) => stream.pipe(Stream.decodeText(), Stream.mkString)

/** Runs `command` to completion and yields its output and exit. */
const run = (options: Ssh.ConnectOptions, command: string, extras: Ssh.ExecExtras = noExtras) =>
  Effect.scoped(
    Effect.flatMap(Ssh.exec(options, command, extras), (remote) =>
      Effect.all(
        { stdout: text(remote.stdout), stderr: text(remote.stderr), exit: remote.exit },
        { concurrency: 3 }
      )
    )
  ).pipe(Effect.timeout("10 seconds"))

/** Reads `stream` until its text so far contains `needle`. */
const readUntil = <E>(stream: Stream.Stream<Uint8Array, E>, needle: string) =>
  stream.pipe(
    Stream.decodeText(),
    Stream.scan("", (text, chunk) => text + chunk),
    Stream.takeUntil((text) => text.includes(needle)),
    Stream.runLast,
    Effect.map(Option.getOrElse(() => "")),
    Effect.timeout("10 seconds")
  )

/** Pids of local processes whose command line contains `marker` (sshd runs on this machine). */
const processesMatching = (marker: string) =>
  Effect.async<ReadonlyArray<number>, Error>((resume) => {
    execFile("pgrep", ["-f", marker], { encoding: "utf8" }, (error, stdout) => {
      if (error !== null && error.code !== 1) return resume(Effect.fail(error))
      resume(
        Effect.succeed(
          stdout
            .split("\n")
            .filter((line) => line.length > 0)
            .map(Number)
        )
      )
    })
  })

/** Polls until no local process matches `marker`: a signalled process dies a moment after kill(2) returns. */
const goneEventually = (marker: string) =>
  processesMatching(marker).pipe(
    Effect.filterOrFail(
      (pids) => pids.length === 0,
      (pids) => new Error(`still running: ${pids.join(", ")}`)
    ),
    Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("5 seconds")))
  )

let markers = 0
const uniqueMarker = () => `vibes-ssh-test-${process.pid}-${++markers}`

const sshErrorOf = <A>(effect: Effect.Effect<A, Ssh.SshError | Error>) =>
  Effect.flip(effect).pipe(
    Effect.filterOrFail(
      (error): error is Ssh.SshError => error instanceof Ssh.SshError,
      (error) => new Error(`expected an SshError, got ${String(error)}`)
    )
  )

describe("Ssh helpers", () => {
  it("shellQuote makes any string one shell word", () => {
    expect(Ssh.shellQuote("plain")).toBe("'plain'")
    expect(Ssh.shellQuote("it's")).toBe(`'it'\\''s'`)
  })

  it("the pid marker line is found however stderr is split into chunks, and only that line is removed", () => {
    const marker = "VIBES-PID-abc"
    const head = `noise from a bashrc\n${marker} 4242\n`
    const full = Buffer.from(`${head}err\n`)
    for (let received = 0; received <= full.length; received++) {
      const scan = Ssh.scanPidMarker(full.subarray(0, received), marker)
      if (received < head.length) expect(scan._tag).toBe("Pending")
      else
        expect(scan).toEqual({
          _tag: "Found",
          pid: 4242,
          rest: Buffer.from(`noise from a bashrc\n${"err\n".slice(0, received - head.length)}`)
        })
    }
    expect(Ssh.scanPidMarker(Buffer.from(`output ${marker} 1\n`), marker)._tag).toBe("Pending")
  })

  it("known_hosts lines are parsed like OpenSSH: patterns, negation, markers and comments", () => {
    const key = "AAAAC3NzaC1lZDI1NTE5AAAAIEbFiWL+UZ1MH4PjborkzJQmW2IQYoQdBsT2ZmTRWs7/"
    const blob = Buffer.from(key, "base64")
    const entries = KnownHosts.parse(
      [
        "# a comment",
        "",
        `@cert-authority *.example.com ssh-ed25519 ${key}`,
        `*.example.com,!bad.example.com ssh-ed25519 ${key}`,
        `[10.0.0.1]:2222 ssh-ed25519 ${key} comment`,
        `broken-line ssh-ed25519`
      ].join("\n")
    )
    expect(entries.map((entry) => entry.line)).toEqual([4, 5])
    expect(KnownHosts.check(entries, "a.example.com", 22, blob)).toEqual({ _tag: "Known", line: 4 })
    expect(KnownHosts.check(entries, "bad.example.com", 22, blob)).toEqual({ _tag: "Unknown" })
    expect(KnownHosts.check(entries, "10.0.0.1", 2222, blob)).toEqual({ _tag: "Known", line: 5 })
    expect(KnownHosts.check(entries, "10.0.0.1", 22, blob)).toEqual({ _tag: "Unknown" })
  })
})

layer(Layer.scoped(TestSshd, Sshd.start), { timeout: 60_000, excludeTestServices: true })(
  "Ssh.exec",
  (it) => {
    it.scoped("stdout, stderr (without the pid marker) and the exit code reach the caller", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const result = yield* run(optionsFor(sshd), "echo out; echo err >&2; exit 3")
        expect(result).toEqual({ stdout: "out\n", stderr: "err\n", exit: { code: 3, signal: null } })
      })
    )

    it.scoped("a command killed by a signal reports the signal", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const result = yield* run(optionsFor(sshd), "kill -TERM $$")
        expect(result.exit).toEqual({ code: null, signal: "SIGTERM" })
      })
    )

    it.scoped("output arrives while the command still runs", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const fifo = path.join(dir, "fifo")
        yield* Sshd.run("mkfifo", [fifo])
        const remote = yield* Ssh.exec(
          optionsFor(sshd),
          `echo first; read line < ${Ssh.shellQuote(fifo)}; echo "got $line"`,
          noExtras
        )
        const exit = yield* Effect.fork(remote.exit)
        // The command cannot end before the fifo is written, which happens only after "first" arrived.
        expect(yield* readUntil(remote.stdout, "first\n")).toBe("first\n")
        expect(yield* Fiber.poll(exit)).toEqual(Option.none())
        yield* Effect.promise(() => fs.promises.writeFile(fifo, "go\n"))
        expect(yield* text(remote.stdout)).toBe("got go\n")
        expect(yield* Fiber.join(exit)).toEqual({ code: 0, signal: null })
      })
    )

    it.scoped("SIGTERM ends a running command", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const marker = uniqueMarker()
        const remote = yield* Ssh.exec(
          optionsFor(sshd),
          `echo ready; sh -c 'sleep 1000; :' ${marker}`,
          noExtras
        )
        yield* readUntil(remote.stdout, "ready\n")
        yield* remote.signal("SIGTERM")
        expect(yield* remote.exit).toEqual({ code: null, signal: "SIGTERM" })
        yield* goneEventually(marker)
      })
    )

    it.scoped("a child that ignores SIGTERM survives it, and the whole tree is gone after SIGKILL", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const plain = uniqueMarker()
        const stubborn = uniqueMarker()
        const remote = yield* Ssh.exec(
          optionsFor(sshd),
          `sh -c 'sleep 1000; :' ${plain} & exec sh -c 'trap "" TERM; echo ready; sleep 1000; :' ${stubborn}`,
          noExtras
        )
        const exit = yield* Effect.fork(remote.exit)
        yield* readUntil(remote.stdout, "ready\n")
        expect((yield* processesMatching(plain)).length).toBeGreaterThan(0)

        yield* remote.signal("SIGTERM")
        yield* goneEventually(plain)
        expect((yield* processesMatching(stubborn)).length).toBeGreaterThan(0)
        expect(yield* Fiber.poll(exit)).toEqual(Option.none())

        yield* remote.signal("SIGKILL")
        expect(yield* Fiber.join(exit)).toEqual({ code: null, signal: "SIGKILL" })
        yield* goneEventually(stubborn)
      })
    )

    it.scoped("closing the scope while the command runs ends the command", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const marker = uniqueMarker()
        yield* Effect.scoped(
          Effect.gen(function* () {
            const remote = yield* Ssh.exec(
              optionsFor(sshd),
              `echo ready; sh -c 'sleep 1000; :' ${marker}`,
              noExtras
            )
            yield* readUntil(remote.stdout, "ready\n")
          })
        )
        yield* goneEventually(marker)
      })
    )

    it.scoped("a dropped connection fails exit with reason disconnected", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const remote = yield* Ssh.exec(optionsFor(sshd), `echo "$$ $PPID"; sleep 1000`, noExtras)
        const ids = yield* readUntil(remote.stdout, "\n")
        const [group, session] = ids.trim().split(" ").map(Number)
        if (group === undefined || session === undefined) return expect.fail(`no pids in ${ids}`)
        // The orphaned remote command is ours to clean up.
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => process.kill(-group, "SIGKILL")).pipe(Effect.ignore)
        )
        process.kill(session, "SIGKILL")
        const error = yield* sshErrorOf(remote.exit)
        expect(error.reason).toBe("disconnected")
      })
    )

    it.scoped("env and cwd are applied, with values quoted verbatim", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const parent = yield* tempDir("vibes-ssh-")
        const cwd = path.join(parent, "it's a dir")
        fs.mkdirSync(cwd)
        const value = `it's $HOME \`id\` "quoted"\nsecond line`
        const result = yield* run(optionsFor(sshd), `pwd; printf '%s\\n' "$FOO"; echo "$BAR"`, {
          env: { FOO: value, BAR: "bar" },
          cwd: Option.some(cwd)
        })
        expect(result).toEqual({
          stdout: `${cwd}\n${value}\nbar\n`,
          stderr: "",
          exit: { code: 0, signal: null }
        })
      })
    )

    it.scoped("a cwd that does not exist fails the command before it runs", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const result = yield* run(optionsFor(sshd), "echo ran", {
          env: {},
          cwd: Option.some("/nonexistent/vibes")
        })
        expect(result.stdout).toBe("")
        expect(result.exit.code).not.toBe(0)
      })
    )

    it.scoped("an env name that is not a shell variable name is refused", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const error = yield* sshErrorOf(
          run(optionsFor(sshd), "true", { env: { "A;B": "x" }, cwd: Option.none() })
        )
        expect(error.reason).toBe("exec")
      })
    )

    it.scoped("an unknown host key is refused, before authentication", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        yield* Sshd.generateKey(path.join(dir, "other"))
        const error = yield* sshErrorOf(
          run(
            optionsFor(sshd, {
              knownHostsPath: sshd.emptyKnownHostsPath,
              auth: { _tag: "KeyFile", path: path.join(dir, "other"), passphrase: Option.none() }
            }),
            "true"
          )
        )
        expect(error.reason).toBe("host-key-unknown")
        expect(error.message).toContain(sshd.hostKeyFingerprint)
        expect(error.message).toContain(sshd.emptyKnownHostsPath)
      })
    )

    it.scoped("a changed host key is refused", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const otherKey = yield* Sshd.generateKey(path.join(dir, "other"))
        const knownHostsPath = path.join(dir, "known_hosts")
        fs.writeFileSync(knownHostsPath, `[127.0.0.1]:${sshd.port} ${otherKey}\n`)
        const error = yield* sshErrorOf(run(optionsFor(sshd, { knownHostsPath }), "true"))
        expect(error.reason).toBe("host-key-changed")
        expect(error.message).toContain(sshd.hostKeyFingerprint)
      })
    )

    it.scoped("a revoked host key is refused even when it is also listed as known", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const knownHostsPath = path.join(dir, "known_hosts")
        fs.writeFileSync(
          knownHostsPath,
          `@revoked [127.0.0.1]:${sshd.port} ${sshd.hostPublicKey}\n${fs.readFileSync(sshd.knownHostsPath, "utf8")}`
        )
        const error = yield* sshErrorOf(run(optionsFor(sshd, { knownHostsPath }), "true"))
        expect(error.reason).toBe("host-key-changed")
        expect(error.message).toContain("@revoked")
      })
    )

    it.scoped("trustHostKey accepts exactly the presented key when it is unknown or changed", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const otherKey = yield* Sshd.generateKey(path.join(dir, "other"))
        const changedPath = path.join(dir, "known_hosts")
        fs.writeFileSync(changedPath, `[127.0.0.1]:${sshd.port} ${otherKey}\n`)
        const trustHostKey = Option.some(sshd.hostKeyFingerprint)
        for (const knownHostsPath of [sshd.emptyKnownHostsPath, changedPath]) {
          const result = yield* run(optionsFor(sshd, { knownHostsPath, trustHostKey }), "echo ok")
          expect(result.stdout).toBe("ok\n")
        }
        const otherFingerprint = KnownHosts.fingerprint(Buffer.from(otherKey.split(" ")[1] ?? "", "base64"))
        const error = yield* sshErrorOf(
          run(
            optionsFor(sshd, {
              knownHostsPath: sshd.emptyKnownHostsPath,
              trustHostKey: Option.some(otherFingerprint)
            }),
            "true"
          )
        )
        expect(error.reason).toBe("host-key-unknown")
      })
    )

    it.scoped("a hashed known_hosts entry is accepted", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const knownHostsPath = path.join(dir, "known_hosts")
        fs.copyFileSync(sshd.knownHostsPath, knownHostsPath)
        yield* Sshd.run("ssh-keygen", ["-H", "-f", knownHostsPath])
        expect(fs.readFileSync(knownHostsPath, "utf8")).toMatch(/^\|1\|/)
        const result = yield* run(optionsFor(sshd, { knownHostsPath }), "echo ok")
        expect(result.stdout).toBe("ok\n")
      })
    )

    it.scoped("a missing key file fails with reason credential, naming the file", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const missing = "/nonexistent/vibes/id_ed25519"
        const auth: Ssh.SshAuth = { _tag: "KeyFile", path: missing, passphrase: Option.none() }
        const error = yield* sshErrorOf(run(optionsFor(sshd, { auth }), "true"))
        expect(error.reason).toBe("credential")
        expect(error.message).toContain(missing)
        expect((yield* sshErrorOf(Ssh.checkKeyFile(missing, Option.none()))).reason).toBe("credential")
      })
    )

    it.scoped("checkKeyFile accepts a private key and refuses public keys and wrong passphrases", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const locked = path.join(dir, "locked")
        const secret = "correct horse battery staple"
        yield* Sshd.generateKey(locked, secret)
        yield* Ssh.checkKeyFile(sshd.userKeyPath, Option.none())
        yield* Ssh.checkKeyFile(locked, Option.some(Redacted.make(secret)))
        const refusals = yield* Effect.all([
          sshErrorOf(Ssh.checkKeyFile(`${sshd.userKeyPath}.pub`, Option.none())),
          sshErrorOf(Ssh.checkKeyFile(locked, Option.none())),
          sshErrorOf(Ssh.checkKeyFile(locked, Option.some(Redacted.make("wrong passphrase"))))
        ])
        for (const error of refusals) {
          expect(error.reason).toBe("credential")
          expect(error.message).not.toContain("wrong passphrase")
          expect(error.message).not.toContain("PRIVATE KEY")
        }
      })
    )

    it.scoped("a key the server does not accept fails with reason auth", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const other = path.join(dir, "other")
        yield* Sshd.generateKey(other)
        const auth: Ssh.SshAuth = { _tag: "KeyFile", path: other, passphrase: Option.none() }
        const error = yield* sshErrorOf(run(optionsFor(sshd, { auth }), "true"))
        expect(error.reason).toBe("auth")
      })
    )

    it.scoped("an ssh agent holding the key authenticates", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const dir = yield* tempDir("vibes-ssh-")
        const socket = yield* Sshd.startAgent(dir, sshd.userKeyPath)
        const result = yield* run(optionsFor(sshd, { auth: { _tag: "Agent", socket } }), "echo ok")
        expect(result.stdout).toBe("ok\n")
      })
    )

    it.scoped("an ssh agent socket that does not exist fails with reason credential", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const socket = "/nonexistent/vibes/agent.sock"
        const error = yield* sshErrorOf(run(optionsFor(sshd, { auth: { _tag: "Agent", socket } }), "true"))
        expect(error.reason).toBe("credential")
        expect(error.message).toContain(socket)
      })
    )

    it.scoped("a port nobody listens on fails with reason connect", () =>
      Effect.gen(function* () {
        const sshd = yield* TestSshd
        const closed = yield* FreePort.find()
        const error = yield* sshErrorOf(run(optionsFor(sshd, { port: closed }), "true"))
        expect(error.reason).toBe("connect")
      })
    )
  }
)
