/**
 * The SSH transport for remote jobs: one connection a command, the host key checked against
 * known_hosts before authentication, output as streams, and signals that reach the command's
 * whole process group.
 */
import { randomBytes } from "node:crypto"
import * as fs from "node:fs"
import type { Readable } from "node:stream"
import * as NodeStream from "@effect/platform-node/NodeStream"
import { Deferred, Duration, Effect, Exit, Option, Redacted, Schema, type Scope, Stream } from "effect"
import ssh2 from "ssh2"
import * as KnownHosts from "./KnownHosts.js"

/** Why an SSH connection or remote command failed; `message` says what to do about it. */
export class SshError extends Schema.TaggedError<SshError>()("SshError", {
  reason: Schema.Literal(
    "connect",
    "auth",
    "host-key-unknown",
    "host-key-changed",
    "credential",
    "exec",
    "disconnected",
    "timeout"
  ),
  message: Schema.String
}) {}

/** How to authenticate to the remote host. */
export type SshAuth =
  | {
      readonly _tag: "KeyFile"
      readonly path: string
      readonly passphrase: Option.Option<Redacted.Redacted<string>>
    }
  | { readonly _tag: "Agent"; readonly socket: string }
  | { readonly _tag: "Password"; readonly password: Redacted.Redacted<string> }

/** Where and how to connect. */
export interface ConnectOptions {
  readonly host: string
  readonly port: number
  readonly user: string
  readonly auth: SshAuth
  readonly knownHostsPath: string
  /** "SHA256:base64" — accept exactly this host key even if unknown or changed in known_hosts */
  readonly trustHostKey: Option.Option<string>
  readonly keepaliveInterval: Duration.DurationInput
  readonly keepaliveCountMax: number
  readonly readyTimeout: Duration.DurationInput
}

/** How the remote command ended: an exit code, or the signal (`"SIGTERM"`, …) that killed it. */
export interface ExitStatus {
  readonly code: number | null
  readonly signal: string | null
}

/** Signals a remote command can be sent. */
export type Signal = "SIGTERM" | "SIGKILL" | "SIGINT" | "SIGHUP"

/**
 * A command running on a remote host. Its stdin is `/dev/null`. Read both streams, concurrently:
 * unread output stops the command once SSH's window (2 MiB, shared by stdout and stderr) is full.
 */
export interface RemoteProcess {
  readonly stdout: Stream.Stream<Uint8Array, SshError>
  readonly stderr: Stream.Stream<Uint8Array, SshError>
  /** Resolves once the remote command ended; fails with reason "disconnected" if the connection dropped first. */
  readonly exit: Effect.Effect<ExitStatus, SshError>
  /** Signals the remote command's whole process group. */
  readonly signal: (signal: Signal) => Effect.Effect<void>
}

/** The extra environment and working directory of a remote command. */
export interface ExecExtras {
  readonly env: Readonly<Record<string, string>>
  readonly cwd: Option.Option<string>
}

/** POSIX single-quote escaping for building remote command lines from argv. */
export const shellQuote = (arg: string): string => `'${arg.replaceAll("'", `'\\''`)}'`

const describeError = (error: unknown): string => (error instanceof Error ? error.message : String(error))

const label = (options: ConnectOptions): string => `${options.host}:${options.port}`

const isParsedKey = (value: unknown): value is ssh2.ParsedKey =>
  typeof value === "object" &&
  value !== null &&
  "isPrivateKey" in value &&
  typeof value.isPrivateKey === "function" &&
  "getPublicSSH" in value &&
  typeof value.getPublicSSH === "function"

/**
 * Reads and parses a private key. Decrypting a passphrase-protected OpenSSH key runs bcrypt in
 * JavaScript and blocks the event loop for a moment (about 0.4 s at ssh-keygen's default rounds).
 */
const loadKey = (
  path: string,
  passphrase: Option.Option<Redacted.Redacted<string>>
): Effect.Effect<ssh2.ParsedKey, SshError> =>
  Effect.tryPromise({
    try: () => fs.promises.readFile(path),
    catch: (error) =>
      new SshError({
        reason: "credential",
        message: `cannot read SSH key file ${path}: ${error instanceof Error && "code" in error ? String(error.code) : describeError(error)}`
      })
  }).pipe(
    Effect.flatMap((data) => {
      const parsed: unknown = ssh2.utils.parseKey(
        data,
        Option.getOrUndefined(Option.map(passphrase, Redacted.value))
      )
      if (parsed instanceof Error) {
        return Effect.fail(
          new SshError({
            reason: "credential",
            message: `SSH key file ${path} is not a usable private key: ${parsed.message}`
          })
        )
      }
      // A file can hold several keys; ssh2 then returns them all and, like it, we use the first.
      const key: unknown = Array.isArray(parsed) ? parsed[0] : parsed
      if (!isParsedKey(key)) {
        return Effect.fail(
          new SshError({ reason: "credential", message: `SSH key file ${path} holds no key` })
        )
      }
      return key.isPrivateKey()
        ? Effect.succeed(key)
        : Effect.fail(
            new SshError({
              reason: "credential",
              message: `SSH key file ${path} holds a public key; point it at the private key`
            })
          )
    })
  )

/** Checks a key file is readable and parses as a private key (typed SshError reason "credential" otherwise). Used at job submit time. */
export const checkKeyFile = (
  path: string,
  passphrase: Option.Option<Redacted.Redacted<string>>
): Effect.Effect<void, SshError> => Effect.asVoid(loadKey(path, passphrase))

/** The one authentication method `auth` stands for; the key is parsed here so ssh2 does not decrypt it again. */
const authMethod = (auth: SshAuth, username: string): Effect.Effect<ssh2.AnyAuthMethod, SshError> => {
  switch (auth._tag) {
    case "KeyFile":
      return Effect.map(loadKey(auth.path, auth.passphrase), (key) => ({ type: "publickey", username, key }))
    case "Agent":
      return Effect.succeed({ type: "agent", username, agent: auth.socket })
    case "Password":
      return Effect.succeed({ type: "password", username, password: Redacted.value(auth.password) })
  }
}

const describeAuth = (auth: SshAuth): string => {
  switch (auth._tag) {
    case "KeyFile":
      return `key file ${auth.path}`
    case "Agent":
      return `the keys of the ssh agent at ${auth.socket}`
    case "Password":
      return "a password"
  }
}

const hostKeyAlgorithms: Readonly<Record<string, ReadonlyArray<ssh2.ServerHostKeyAlgorithm>>> = {
  "ssh-ed25519": ["ssh-ed25519"],
  "ecdsa-sha2-nistp256": ["ecdsa-sha2-nistp256"],
  "ecdsa-sha2-nistp384": ["ecdsa-sha2-nistp384"],
  "ecdsa-sha2-nistp521": ["ecdsa-sha2-nistp521"],
  "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
  "ssh-dss": ["ssh-dss"]
}

/** ssh2's default host key algorithms, in its order of preference. */
const defaultHostKeyAlgorithms: ReadonlyArray<ssh2.ServerHostKeyAlgorithm> = [
  "ssh-ed25519",
  "ecdsa-sha2-nistp256",
  "ecdsa-sha2-nistp384",
  "ecdsa-sha2-nistp521",
  "rsa-sha2-512",
  "rsa-sha2-256",
  "ssh-rsa"
]

/**
 * Like OpenSSH, asks first for the key types known_hosts has for the host, so that a server
 * with several host keys is not taken to have changed its key; empty when none is known.
 */
const hostKeyAlgorithmsFor = (
  entries: ReadonlyArray<KnownHosts.Entry>,
  options: ConnectOptions
): Array<ssh2.ServerHostKeyAlgorithm> => {
  const known = KnownHosts.entriesFor(entries, options.host, options.port)
    .filter((entry) => !entry.revoked)
    .flatMap((entry) => hostKeyAlgorithms[entry.keyType] ?? [])
  return known.length === 0 ? [] : [...new Set([...known, ...defaultHostKeyAlgorithms])]
}

const checkHostKey = (
  options: ConnectOptions,
  entries: ReadonlyArray<KnownHosts.Entry>,
  key: Buffer
): SshError | undefined => {
  const presented = KnownHosts.fingerprint(key)
  const trusted = Option.exists(
    options.trustHostKey,
    (trust) => trust.trim().replace(/=+$/, "") === presented
  )
  const where = label(options)
  const name = KnownHosts.hostName(options.host, options.port)
  const file = options.knownHostsPath
  const verdict = KnownHosts.check(entries, options.host, options.port, key)
  switch (verdict._tag) {
    case "Known":
      return undefined
    case "Revoked":
      return new SshError({
        reason: "host-key-changed",
        message: `host key of ${where} (${presented}) is marked @revoked in ${file} (line ${verdict.line}); refusing to connect`
      })
    case "Changed":
      return trusted
        ? undefined
        : new SshError({
            reason: "host-key-changed",
            message: `host key of ${where} changed: it presented ${KnownHosts.keyTypeOf(key) ?? "a key"} ${presented}, but ${file} (line ${verdict.lines.join(", ")}) has a different key for it; this may be an attack. If the change is expected, remove the old entry with ssh-keygen -R '${name}' -f ${file}, or trust the new key explicitly with trustHostKey`
          })
    case "Unknown":
      return trusted
        ? undefined
        : new SshError({
            reason: "host-key-unknown",
            message: `host key of ${where} (${presented}) is not in ${file}; add it with ssh-keyscan -p ${options.port} ${options.host} >> ${file} or trust it explicitly with trustHostKey`
          })
  }
}

const classifyConnectError = (
  options: ConnectOptions,
  error: Error & ssh2.ClientErrorExtensions
): SshError => {
  switch (error.level) {
    case "client-authentication":
      return new SshError({
        reason: "auth",
        message: `authentication as ${options.user} on ${label(options)} with ${describeAuth(options.auth)} failed: ${error.message}`
      })
    case "agent":
      return new SshError({
        reason: "credential",
        message: `the ssh agent${options.auth._tag === "Agent" ? ` at ${options.auth.socket}` : ""} cannot be used: ${error.message}`
      })
    case "client-timeout":
      return new SshError({
        reason: "timeout",
        message: `no SSH session with ${label(options)} within ${Duration.format(options.readyTimeout)}: ${error.message}`
      })
    default:
      return new SshError({
        reason: "connect",
        message: `cannot connect to ${label(options)}: ${error.message}`
      })
  }
}

/** An SSH client and what is known about its connection. */
interface Connection {
  readonly client: ssh2.Client
  /** Set once the connection is gone. */
  lost: SshError | undefined
}

const openConnection = (options: ConnectOptions): Connection => {
  const client = new ssh2.Client()
  const connection: Connection = { client, lost: undefined }
  let lastError: Error | undefined
  const onGone = () => {
    connection.lost ??= new SshError({
      reason: "disconnected",
      message: `the SSH connection to ${label(options)} was lost${lastError === undefined ? "" : `: ${lastError.message}`}`
    })
  }
  // Without a listener, a late "error" would crash the process; the handshake reports its own.
  client.on("error", (error) => (lastError ??= error))
  client.on("end", onGone).on("close", onGone)
  return connection
}

const closeConnection = (connection: Connection): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (connection.lost !== undefined) return resume(Effect.void)
    connection.client.once("close", () => resume(Effect.void))
    connection.client.end()
  }).pipe(
    Effect.timeout("2 seconds"),
    Effect.ignore,
    Effect.ensuring(Effect.sync(() => connection.client.destroy()))
  )

const handshake = (
  connection: Connection,
  options: ConnectOptions,
  method: ssh2.AnyAuthMethod,
  entries: ReadonlyArray<KnownHosts.Entry>
): Effect.Effect<void, SshError> =>
  Effect.async<void, SshError>((resume) => {
    const { client } = connection
    let hostKeyError: SshError | undefined
    const settle = (effect: Effect.Effect<void, SshError>) => {
      client.off("ready", onReady).off("error", onError).off("close", onClose)
      resume(effect)
    }
    const onReady = () => settle(Effect.void)
    const onError = (error: Error & ssh2.ClientErrorExtensions) =>
      settle(Effect.fail(hostKeyError ?? classifyConnectError(options, error)))
    const onClose = () =>
      settle(
        Effect.fail(
          hostKeyError ??
            new SshError({
              reason: "connect",
              message: `${label(options)} closed the connection before the SSH session was set up`
            })
        )
      )
    client.on("ready", onReady).on("error", onError).on("close", onClose)
    const serverHostKey = hostKeyAlgorithmsFor(entries, options)
    try {
      client.connect({
        authHandler: [method],
        host: options.host,
        port: options.port,
        username: options.user,
        keepaliveInterval: Duration.toMillis(options.keepaliveInterval),
        keepaliveCountMax: options.keepaliveCountMax,
        readyTimeout: Duration.toMillis(options.readyTimeout),
        ...(serverHostKey.length > 0 ? { algorithms: { serverHostKey } } : {}),
        hostVerifier: (key: Buffer): boolean => {
          hostKeyError = checkHostKey(options, entries, key)
          return hostKeyError === undefined
        }
      })
    } catch (error) {
      settle(
        Effect.fail(
          new SshError({
            reason: "connect",
            message: `cannot connect to ${label(options)}: ${describeError(error)}`
          })
        )
      )
    }
    return Effect.sync(() => client.destroy())
  }).pipe(
    Effect.timeoutFail({
      duration: Duration.sum(options.readyTimeout, Duration.seconds(1)),
      onTimeout: () =>
        new SshError({
          reason: "timeout",
          message: `no SSH session with ${label(options)} within ${Duration.format(options.readyTimeout)}`
        })
    })
  )

/** An authenticated connection (host key checked first), closed with the scope. */
const connect = (options: ConnectOptions): Effect.Effect<Connection, SshError, Scope.Scope> =>
  Effect.gen(function* () {
    const method = yield* authMethod(options.auth, options.user)
    const entries = yield* KnownHosts.read(options.knownHostsPath).pipe(
      Effect.mapError((error) => new SshError({ reason: "host-key-unknown", message: error.message }))
    )
    const connection = yield* Effect.acquireRelease(
      Effect.sync(() => openConnection(options)),
      closeConnection
    )
    yield* handshake(connection, options, method, entries)
    return connection
  })

/**
 * Runs `line` on a fresh channel. `onOpen` sees the channel the moment it opens, before this
 * effect resumes: a quick command's exit status can arrive in between, and an event without a
 * listener is lost.
 */
const openChannel = (
  connection: Connection,
  options: ConnectOptions,
  line: string,
  onOpen: (channel: ssh2.ClientChannel) => void = () => undefined
): Effect.Effect<ssh2.ClientChannel, SshError> =>
  Effect.async<ssh2.ClientChannel, SshError>((resume) => {
    const refused = (error: unknown) =>
      new SshError({
        reason: "exec",
        message: `${label(options)} did not start the command: ${describeError(error)}`
      })
    try {
      connection.client.exec(line, (error, channel) => {
        if (error !== undefined) return resume(Effect.fail(refused(error)))
        onOpen(channel)
        resume(Effect.succeed(channel))
      })
    } catch (error) {
      resume(Effect.fail(refused(error)))
    }
  })

/** Runs `line` on a fresh channel of the connection and waits for it to end, discarding its output. */
const runQuietly = (
  connection: Connection,
  options: ConnectOptions,
  line: string
): Effect.Effect<void, SshError> =>
  Effect.gen(function* () {
    const ended = yield* Deferred.make<void>()
    const channel = yield* openChannel(connection, options, line, (channel) => {
      channel.on("error", () => undefined)
      channel.once("exit", () => Deferred.unsafeDone(ended, Exit.void))
      channel.once("close", () => Deferred.unsafeDone(ended, Exit.void))
    })
    channel.resume()
    channel.stderr.resume()
    channel.end()
    yield* Deferred.await(ended).pipe(Effect.onInterrupt(() => Effect.sync(() => channel.close())))
  })

const envName = /^[A-Za-z_][A-Za-z0-9_]*$/

/**
 * The line sent to the remote login shell: it reports its pid (the process group sshd made for
 * the command) on stderr behind `marker`, then becomes `sh` running the user's line.
 */
const remoteLine = (marker: string, command: string, extras: ExecExtras): Effect.Effect<string, SshError> => {
  const invalid = Object.keys(extras.env).find((name) => !envName.test(name))
  if (invalid !== undefined) {
    return Effect.fail(
      new SshError({
        reason: "exec",
        message: `environment variable name ${JSON.stringify(invalid)} is not a valid shell variable name`
      })
    )
  }
  const setup = [
    ...Object.entries(extras.env).map(([name, value]) => `export ${name}=${shellQuote(value)}`),
    ...Option.match(extras.cwd, { onNone: () => [], onSome: (cwd) => [`cd ${shellQuote(cwd)} || exit 1`] })
  ]
  const inner = [...setup, command].join("\n")
  return Effect.succeed(`printf '${marker} %s\\n' "$$" >&2; exec sh -c ${shellQuote(inner)} </dev/null`)
}

/** The result of looking for the pid marker line at the start of stderr. */
export type PidMarkerScan =
  { readonly _tag: "Found"; readonly pid: number; readonly rest: Buffer } | { readonly _tag: "Pending" }

/** Looks for the line `<marker> <pid>` in `head`; `rest` is `head` without that line. */
export const scanPidMarker = (head: Buffer, marker: string): PidMarkerScan => {
  const needle = Buffer.from(`${marker} `, "latin1")
  for (let at = head.indexOf(needle); at >= 0; at = head.indexOf(needle, at + 1)) {
    if (at > 0 && head[at - 1] !== 0x0a) continue
    const end = head.indexOf(0x0a, at)
    if (end < 0) return { _tag: "Pending" }
    const pid = head.subarray(at + needle.length, end).toString("latin1")
    if (/^[0-9]+$/.test(pid)) {
      return {
        _tag: "Found",
        pid: Number(pid),
        rest: Buffer.concat([head.subarray(0, at), head.subarray(end + 1)])
      }
    }
  }
  return { _tag: "Pending" }
}

/** Give up looking for the marker after this much stderr. */
const markerSearchLimit = 64 * 1024

interface Prelude {
  readonly pid: Option.Option<number>
  /** Stderr read while looking for the marker, without the marker line. */
  readonly head: Buffer
}

/**
 * Reads stderr up to the pid marker line, whether or not anyone consumes stderr, and leaves the
 * rest buffered in the stream.
 */
const readPrelude = (stderr: Readable, marker: string, done: (prelude: Prelude) => void): void => {
  let head = Buffer.alloc(0)
  const settle = (prelude: Prelude) => {
    stderr.off("readable", onReadable).off("end", onEnd).off("error", onEnd)
    done(prelude)
  }
  const onEnd = () => settle({ pid: Option.none(), head })
  const onReadable = () => {
    for (let chunk: unknown = stderr.read(); chunk !== null; chunk = stderr.read()) {
      if (!(chunk instanceof Uint8Array)) continue
      head = Buffer.concat([head, chunk])
      const scan = scanPidMarker(head, marker)
      if (scan._tag === "Found") return settle({ pid: Option.some(scan.pid), head: scan.rest })
      if (head.length > markerSearchLimit) return settle({ pid: Option.none(), head })
    }
  }
  stderr.on("readable", onReadable).on("end", onEnd).on("error", onEnd)
}

const normaliseSignal = (signal: unknown): string | null =>
  typeof signal === "string" && signal.length > 0
    ? signal.startsWith("SIG")
      ? signal
      : `SIG${signal}`
    : null

/**
 * Connects (host key checked before auth) and runs `command`, a POSIX shell line, with `env`
 * exported and in `cwd`. The scope owns the connection: closing it while the command runs sends
 * SIGTERM to the command's process group, then closes the channel and the connection.
 */
export const exec = Effect.fn("Ssh.exec")(function* (
  options: ConnectOptions,
  command: string,
  extras: ExecExtras
): Effect.fn.Return<RemoteProcess, SshError, Scope.Scope> {
  yield* Effect.annotateCurrentSpan({
    "ssh.host": options.host,
    "ssh.port": options.port,
    "ssh.user": options.user
  })
  const marker = `VIBES-PID-${randomBytes(8).toString("hex")}`
  const line = yield* remoteLine(marker, command, extras)
  const connection = yield* connect(options)
  const exit = yield* Deferred.make<ExitStatus, SshError>()
  let exited = false
  const channel = yield* openChannel(connection, options, line, (channel) => {
    channel.once("exit", (code: unknown, signal: unknown) => {
      exited = true
      Deferred.unsafeDone(
        exit,
        Exit.succeed({ code: typeof code === "number" ? code : null, signal: normaliseSignal(signal) })
      )
    })
    channel.once("close", () => Deferred.unsafeDone(exit, Exit.succeed({ code: null, signal: null })))
  })
  connection.client.once("close", () =>
    Deferred.unsafeDone(
      exit,
      Exit.fail(
        connection.lost ??
          new SshError({
            reason: "disconnected",
            message: `the SSH connection to ${label(options)} was lost`
          })
      )
    )
  )
  // Stream errors reach the streams' readers; these keep an unread stream's error from crashing the process.
  channel.on("error", () => undefined)
  channel.stderr.on("error", () => undefined)

  const prelude = yield* Deferred.make<Prelude>()
  readPrelude(channel.stderr, marker, (result) => Deferred.unsafeDone(prelude, Exit.succeed(result)))

  const output = (readable: Readable): Stream.Stream<Uint8Array, SshError> =>
    NodeStream.fromReadable<SshError, Uint8Array>(
      () => readable,
      (error) =>
        new SshError({
          reason: "disconnected",
          message: `reading the output of the command on ${label(options)} failed: ${describeError(error)}`
        }),
      { closeOnDone: false }
    ).pipe(
      Stream.concat(
        Stream.suspend(() =>
          !exited && connection.lost !== undefined ? Stream.fail(connection.lost) : Stream.empty
        )
      )
    )

  const pgid = Deferred.await(prelude).pipe(
    Effect.timeoutTo({
      duration: "5 seconds",
      onSuccess: (result) => result.pid,
      onTimeout: () => Option.none()
    })
  )

  const signal = (signal: Signal): Effect.Effect<void> =>
    Effect.gen(function* () {
      const name = signal.slice(3)
      // OpenSSH then signals the process group itself, but it refuses to for root logins (no
      // post-auth privilege separation), and other servers may ignore it; hence the kill below.
      yield* Effect.sync(() => {
        try {
          channel.signal(name)
        } catch {
          // the channel is already closed
        }
      })
      const group = yield* pgid
      if (Option.isNone(group) || connection.lost !== undefined) return
      yield* runQuietly(connection, options, `kill -s ${name} -- -${group.value}`).pipe(
        Effect.timeout("5 seconds"),
        Effect.ignore
      )
    }).pipe(Effect.withSpan("Ssh.signal", { attributes: { "ssh.signal": signal } }))

  yield* Effect.addFinalizer(() =>
    exited || connection.lost !== undefined
      ? Effect.void
      : signal("SIGTERM").pipe(Effect.timeout("5 seconds"), Effect.ignore)
  )

  return {
    stdout: output(channel),
    stderr: Stream.unwrap(
      Effect.map(Deferred.await(prelude), ({ head }) =>
        Stream.concat(
          head.length > 0 ? Stream.make(new Uint8Array(head)) : Stream.empty,
          output(channel.stderr)
        )
      )
    ),
    exit: Deferred.await(exit),
    signal
  } satisfies RemoteProcess
})
