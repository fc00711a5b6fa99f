/**
 * Sessions and jobs cannot reach the server's secrets: with vibes run as root they run as the
 * sandbox's user, who cannot read the data dir, the server's or the PTY host's `/proc` entries,
 * or connect to the PTY host; in every mode no secret is in their environment or their logged
 * output, and their proxy tokens end with them.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { fileURLToPath } from "node:url"
import { Chunk, Context, Effect, Layer, Redacted, Schedule, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter } from "../../rpc/Events.js"
import { JobSpec, type ExecuteOutput, type JobOutput } from "../../rpc/Jobs.js"
import { pidFilePath, socketPath } from "../../infra/pty/PtyHostRpcs.js"
import { dataSocketPathOf } from "../../infra/pty/PtyDataProtocol.js"
import { clientLayer } from "../support/Attach.js"
import * as Processes from "../support/Processes.js"
import * as TestDatabase from "../support/TestDatabase.js"
import * as TestServer from "../support/TestServer.js"
import * as VibesProcess from "../support/VibesProcess.js"
import { readableTempDir, writableTempDir } from "../support/TempDir.js"

const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

const providerKey = "sk-isolation-provider-key-0123456789"
const fileKey = "sk-isolation-key-in-a-file-0123456789"
const clusterSecret = "isolation-cluster-secret-0123456789"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

// The server reads its provider key from the environment, like any key variable.
const NodeLive = Layer.scoped(
  Node,
  Effect.gen(function* () {
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        process.env["ANTHROPIC_API_KEY"] = providerKey
        process.env["VIBES_CLUSTER_SECRET"] = clusterSecret
      }),
      () =>
        Effect.sync(() => {
          delete process.env["ANTHROPIC_API_KEY"]
          delete process.env["VIBES_CLUSTER_SECRET"]
        })
    )
    return yield* TestServer.start
  })
)

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const stdout = (outputs: ReadonlyArray<ExecuteOutput | JobOutput>) =>
  outputs.flatMap((o) => (o._tag === "JobLog" && o.stream === "stdout" ? [o.chunk] : [])).join("")

/** A node under test: where it listens, its token and data dir, and its process. */
interface Target {
  readonly url: string
  readonly token: string
  readonly dataDir: string
  readonly pid: number
  /** A provider key file of the server, outside its data dir. */
  readonly keyFile?: string
}

/** The argument of the `sleep` a sibling session runs (seconds: long enough, and unique). */
const siblingSleep = `6${String(process.pid).padStart(7, "0")}`

/** A script that reports, line by line, what the program could reach. */
const probe = (server: Target) => {
  const hostPid = Number(fs.readFileSync(pidFilePath(server.dataDir), "utf8").trim())
  const serverPid = server.pid
  const connect = (name: string, socket: string) =>
    `require("net").connect(${JSON.stringify(socket)}).on("connect", () => { console.log("${name}=connected"); process.exit(0) }).on("error", (e) => { console.log("${name}=" + e.code); process.exit(0) })`
  return [
    `echo "uid=$(id -u)"`,
    `echo "home=$HOME"`,
    `cat ${server.dataDir}/admin-token >/dev/null 2>&1 && echo token=read || echo token=refused`,
    `ls ${server.dataDir} >/dev/null 2>&1 && echo datadir=listed || echo datadir=refused`,
    `cat /proc/${serverPid}/environ >/dev/null 2>&1 && echo server-environ=read || echo server-environ=refused`,
    `cat /proc/${hostPid}/environ >/dev/null 2>&1 && echo host-environ=read || echo host-environ=refused`,
    ...(server.keyFile === undefined ? [] : [`echo "keyfile=$(cat ${server.keyFile} 2>&1)"`]),
    `${process.execPath} -e '${connect("socket", socketPath(server.dataDir))}'`,
    `${process.execPath} -e '${connect("data-socket", dataSocketPathOf(socketPath(server.dataDir)))}'`,
    // The pattern does not match itself (this script's own command line).
    `pgrep -f "sleep 6[${siblingSleep.slice(1, 2)}]${siblingSleep.slice(2)}" >/dev/null && echo other-session=seen || echo other-session=hidden`,
    `echo "--- env"`,
    `env`
  ].join("\n")
}

/** Starts a session that writes what `probe` finds to a file, and returns that report. */
const sessionReport = (rpc: Client.VibesClient["Type"], server: Target, prefix: string) =>
  Effect.gen(function* () {
    const dir = yield* writableTempDir(prefix)
    const report = path.join(dir, "report")
    // Another session, whose process the probe looks for.
    const sibling = yield* rpc.Sessions.Create({
      command: "/bin/sh",
      args: ["-c", `exec sleep ${siblingSleep}`]
    })
    yield* Effect.addFinalizer(() => Effect.ignore(rpc.Sessions.Close({ sessionId: sibling.id })))
    yield* Effect.sync(() => {
      try {
        childProcess.execFileSync("pgrep", ["-f", `sleep ${siblingSleep}`], { stdio: "ignore" })
        return true
      } catch {
        return false
      }
    }).pipe(
      Effect.repeat({ until: (running) => running, schedule: Schedule.spaced("50 millis") }),
      Effect.timeout("30 seconds"),
      Effect.orDie
    )
    const session = yield* rpc.Sessions.Create({
      command: "/bin/sh",
      args: ["-c", `(${probe(server)}) > ${report}.part 2>&1; mv ${report}.part ${report}; exec sleep 600`],
      cwd: dir
    })
    yield* Effect.addFinalizer(() => Effect.ignore(rpc.Sessions.Close({ sessionId: session.id })))
    yield* Effect.sync(() => fs.existsSync(report)).pipe(
      Effect.repeat({ until: (exists) => exists, schedule: Schedule.spaced("50 millis") }),
      Effect.timeout("30 seconds"),
      Effect.orDie
    )
    return { text: fs.readFileSync(report, "utf8"), sessionId: session.id }
  })

const field = (report: string, name: string) => new RegExp(`^${name}=(.*)$`, "m").exec(report)?.[1]

/** What every report must show under a root server: nothing of the server's reachable. */
const expectIsolated = (report: string, server: Target) => {
  expect(field(report, "uid")).toBeDefined()
  expect(field(report, "uid")).not.toBe("0")
  expect(field(report, "home")).not.toBe("/root")
  // The data dir is root's alone, and an empty directory besides in the program's namespaces.
  expect(field(report, "token")).toBe("refused")
  expect(field(report, "server-environ")).toBe("refused")
  expect(field(report, "host-environ")).toBe("refused")
  expect(field(report, "socket")).toBe("ENOENT")
  expect(field(report, "data-socket")).toBe("ENOENT")
  // Nor are the other sessions' processes there to see, signal or trace.
  expect(field(report, "other-session")).toBe("hidden")
  expectNoSecrets(report, server)
}

/**
 * What every report must show under a server run by an ordinary user: the program runs as that
 * user, but the data dir is an empty directory to it and the server's processes do not exist.
 */
const expectHidden = (report: string, server: Target, uid: number) => {
  expect(field(report, "uid")).toBe(String(uid))
  // A key file the program's user owns is there, and empty to it.
  if (server.keyFile !== undefined) expect(field(report, "keyfile")).toBe("")
  expect(field(report, "token")).toBe("refused")
  expect(field(report, "server-environ")).toBe("refused")
  expect(field(report, "host-environ")).toBe("refused")
  expect(field(report, "socket")).toBe("ENOENT")
  expect(field(report, "data-socket")).toBe("ENOENT")
  // Nor are the other sessions' processes there to see, signal or trace.
  expect(field(report, "other-session")).toBe("hidden")
  expectNoSecrets(report, server)
}

const expectNoSecrets = (text: string, server: Target) => {
  expect(text).not.toContain(server.token)
  expect(text).not.toContain(providerKey)
  expect(text).not.toContain(fileKey)
  expect(text).not.toContain(clusterSecret)
  expect(text).not.toMatch(/^VIBES_ADMIN_TOKEN=/m)
  expect(text).not.toMatch(/^VIBES_CLUSTER_SECRET=/m)
  expect(text).not.toMatch(/^DATABASE_URL=/m)
}

const runAsRoot = process.getuid?.() === 0

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("isolation", (it) => {
  it.scoped("a shell in a session runs as the run-as user and reaches none of the server's secrets", () =>
    Effect.gen(function* () {
      const server = { ...(yield* Node), pid: process.pid }
      const rpc = yield* client
      const { text, sessionId } = yield* sessionReport(rpc, server, "vibes-isolation-")
      if (runAsRoot) {
        expectIsolated(text, server)
        expect(field(text, "uid")).toBe(
          childProcess.execFileSync("id", ["-u", "vibes"], { encoding: "utf8" }).trim()
        )
      } else {
        // The suite run by an ordinary user: its server is one too, whose programs run as that
        // user in namespaces that hide the data dir and the server (as in the block below).
        expectHidden(text, server, process.getuid?.() ?? -1)
      }
      // The session's own proxy token is there, in place of the provider key.
      expect(field(text, "ANTHROPIC_API_KEY")).toMatch(new RegExp(`^vibes-session\\.${sessionId}\\.`))
    })
  )

  it.scoped(
    "a job (stream and terminal) runs as the run-as user and reaches none of the server's secrets",
    () =>
      Effect.gen(function* () {
        const server = { ...(yield* Node), pid: process.pid }
        const rpc = yield* client
        for (const strategy of ["stream", "terminal"] as const) {
          const outputs = Chunk.toReadonlyArray(
            yield* Stream.runCollect(
              rpc.Jobs.Execute(JobSpec.make({ command: probe(server), shell: true, strategy }))
            )
          )
          const text = stdout(outputs)
          if (runAsRoot) expectIsolated(text.replace(/\r/g, ""), server)
          else expectHidden(text.replace(/\r/g, ""), server, process.getuid?.() ?? -1)
          expect(field(text.replace(/\r/g, ""), "ANTHROPIC_API_KEY")).toMatch(/^vibes-job\./)
        }
      })
  )

  it.scoped("a job whose program does not exist still fails as one that could not start", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const outputs = Chunk.toReadonlyArray(
        yield* Stream.runCollect(rpc.Jobs.Execute(JobSpec.make({ command: "no-such-program-for-vibes" })))
      )
      const system = outputs.flatMap((o) => (o._tag === "JobLog" && o.stream === "system" ? [o.chunk] : []))
      expect(system.join("")).toContain("could not start no-such-program-for-vibes")
    })
  )

  it.scoped("a job that prints a secret has it redacted before it reaches the log and the events", () =>
    Effect.gen(function* () {
      const server = { ...(yield* Node), pid: process.pid }
      const rpc = yield* client
      const head = (yield* rpc.Events.Head()).head
      // The command line itself holds no secret: the program puts it together.
      const [a, b] = [server.token.slice(0, 9), server.token.slice(9)]
      const outputs = Chunk.toReadonlyArray(
        yield* Stream.runCollect(
          rpc.Jobs.Execute(
            JobSpec.make({
              command: `printf 'token=%s%s\\n' '${a}' '${b}'; printf '%s' '${a}'; sleep 0.2; printf '%s\\n' '${b}'; env`,
              shell: true
            })
          )
        )
      )
      const text = stdout(outputs)
      expect(text).toContain("token=[redacted]\n")
      expectNoSecrets(text, server)
      const accepted = outputs[0]
      if (accepted?._tag !== "JobAccepted") return expect.fail("the job was not accepted")
      const events = yield* rpc.Events.Read({
        from: head + 1,
        filter: EventFilter.make({ jobId: accepted.job.id }),
        limit: 1000
      })
      expect(events.length).toBeGreaterThan(0)
      expectNoSecrets(JSON.stringify(events), server)
      const logs = Chunk.toReadonlyArray(
        yield* Stream.runCollect(rpc.Jobs.Logs({ jobId: accepted.job.id, follow: false }))
      )
      expectNoSecrets(JSON.stringify(logs), server)
    })
  )

  it.scoped("a job's proxy token works while the job runs and is refused once it has ended", () =>
    Effect.gen(function* () {
      const server = { ...(yield* Node), pid: process.pid }
      const rpc = yield* client
      const job = yield* rpc.Jobs.Submit(
        JobSpec.make({ command: `echo "token=$VIBES_PROXY_TOKEN"; exec sleep 600`, shell: true })
      )
      const text = yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(
        Stream.scan("", (acc, o) => (o._tag === "JobLog" && o.stream === "stdout" ? acc + o.chunk : acc)),
        Stream.takeUntil((acc) => acc.includes("\n")),
        Stream.runLast,
        Effect.map((last) => (last._tag === "Some" ? last.value : ""))
      )
      const token = field(text, "token") ?? ""
      expect(token).toMatch(new RegExp(`^vibes-job\\.${job.id}\\.`))
      // An unknown provider is a 404 for a valid token, a 401 for one that is not.
      const ask = Effect.promise(() =>
        fetch(`${server.url}/proxy/nowhere/v1/models`, {
          headers: { authorization: `Bearer ${token}` }
        }).then(async (response) => {
          await response.text()
          return response.status
        })
      )
      expect(yield* ask).toBe(404)
      yield* rpc.Jobs.Cancel({ jobId: job.id })
      yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(Stream.runDrain)
      expect(yield* ask).toBe(401)
    })
  )
})

/** The user the ordinary-user node runs as: `nobody` when the suite runs as root, else the suite's. */
const ordinaryUid = runAsRoot ? 65534 : (process.getuid?.() ?? 65534)

/**
 * A `vibes serve` (the built one) run by an ordinary user with the default sandbox, with a data
 * dir and HOME of its own.
 */
class OrdinaryNode extends Context.Tag("test/OrdinaryNode")<OrdinaryNode, Target>() {}

const OrdinaryNodeLive = Layer.scoped(
  OrdinaryNode,
  Effect.gen(function* () {
    const root = yield* readableTempDir("vibes-isolation-user-")
    const dataDir = path.join(root, "data")
    const home = path.join(root, "home")
    const keys = path.join(root, "keys")
    for (const dir of [dataDir, home, keys]) {
      fs.mkdirSync(dir, { mode: 0o700 })
      if (runAsRoot) fs.chownSync(dir, ordinaryUid, ordinaryUid)
    }
    // A provider whose key is in a file of the server's user, as the README asks (0600).
    const keyFile = path.join(keys, "files.key")
    fs.writeFileSync(keyFile, `${fileKey}\n`, { mode: 0o600 })
    if (runAsRoot) fs.chownSync(keyFile, ordinaryUid, ordinaryUid)
    const database = yield* TestDatabase.freshDatabase("vibes_isolation_user")
    const env = VibesProcess.childEnv({
      HOME: home,
      DATABASE_URL: Redacted.value(database.url),
      ANTHROPIC_API_KEY: providerKey,
      VIBES_CLUSTER_SECRET: clusterSecret,
      VIBES_PTY_HOST_IDLE_EXIT: "1",
      VIBES_PROXY_PROVIDERS: JSON.stringify([
        { name: "files", baseUrl: "http://127.0.0.1:9", format: "openai", auth: "bearer", keyFile }
      ])
    })
    const child = yield* Processes.scopedChild(
      () =>
        childProcess.spawn(
          process.execPath,
          [path.join(projectRoot, "bin", "vibes.js"), "serve", "--port", "0", "--data-dir", dataDir],
          {
            cwd: home,
            env,
            ...(runAsRoot ? { uid: ordinaryUid, gid: ordinaryUid } : {}),
            stdio: ["ignore", "pipe", "pipe"]
          }
        ),
      "20 seconds"
    )
    let output = ""
    const url = yield* Effect.async<string, Error>((resume) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString("utf8")
        const match = /"message":"vibes is listening".*?"url":"([^"]+)"/.exec(output)
        if (match?.[1] !== undefined) resume(Effect.succeed(match[1]))
      }
      child.stdout.on("data", onData)
      child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")))
      child.once("exit", (code) => resume(Effect.fail(new Error(`vibes serve exited (${code}):\n${output}`))))
    }).pipe(Effect.timeout("60 seconds"), Effect.orDie)
    const token = fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()
    return { url, token, dataDir, pid: child.pid ?? 0, keyFile }
  })
)

const ordinaryClient = Effect.flatMap(OrdinaryNode, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

layer(OrdinaryNodeLive, { timeout: 120_000, excludeTestServices: true })(
  "isolation of an ordinary user's node",
  (it) => {
    it.scoped(
      "a shell in a session runs as the server's user, but the data dir and the server's processes are hidden from it",
      () =>
        Effect.gen(function* () {
          const server = yield* OrdinaryNode
          const rpc = yield* ordinaryClient
          const { text } = yield* sessionReport(rpc, server, "vibes-isolation-user-session-")
          // If the kernel refused user namespaces this fails: the README names that as the limit.
          expectHidden(text, server, ordinaryUid)
        })
    )

    it.scoped(
      "a job runs as the server's user, but the data dir and the server's processes are hidden from it",
      () =>
        Effect.gen(function* () {
          const server = yield* OrdinaryNode
          const rpc = yield* ordinaryClient
          for (const strategy of ["stream", "terminal"] as const) {
            const outputs = Chunk.toReadonlyArray(
              yield* Stream.runCollect(
                rpc.Jobs.Execute(JobSpec.make({ command: probe(server), shell: true, strategy, cwd: "/tmp" }))
              )
            )
            expectHidden(stdout(outputs).replace(/\r/g, ""), server, ordinaryUid)
          }
        })
    )

    it.scoped("Ctrl-C in a session reaches its program through the namespaces", () =>
      Effect.gen(function* () {
        const rpc = yield* ordinaryClient
        const dir = yield* writableTempDir("vibes-isolation-ctrl-c-")
        const [ready, got] = [path.join(dir, "ready"), path.join(dir, "got")]
        const session = yield* rpc.Sessions.Create({
          command: "/bin/sh",
          args: ["-c", `trap 'echo int > ${got}; exit 3' INT; touch ${ready}; while :; do sleep 0.1; done`],
          cwd: dir
        })
        yield* Effect.addFinalizer(() => Effect.ignore(rpc.Sessions.Close({ sessionId: session.id })))
        const exists = (file: string) =>
          Effect.sync(() => fs.existsSync(file)).pipe(
            Effect.repeat({ until: (found) => found, schedule: Schedule.spaced("50 millis") }),
            Effect.timeout("30 seconds"),
            Effect.orDie
          )
        yield* exists(ready)
        yield* rpc.Sessions.Input({ sessionId: session.id, data: new Uint8Array([3]) })
        // The shell creates the file, then writes into it: wait for what it wrote.
        const written = yield* Effect.sync(() =>
          fs.existsSync(got) ? fs.readFileSync(got, "utf8") : ""
        ).pipe(
          Effect.filterOrFail((text) => text.endsWith("\n")),
          Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.upTo("30 seconds"))),
          Effect.orDie
        )
        expect(written.trim()).toBe("int")
      })
    )

    it.scoped("a job's cancel still ends it and everything it started", () =>
      Effect.gen(function* () {
        const rpc = yield* ordinaryClient
        const job = yield* rpc.Jobs.Submit(
          JobSpec.make({ command: "echo started; sleep 600 & exec sleep 601", shell: true, cwd: "/tmp" })
        )
        yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(
          Stream.takeUntil((o) => o._tag === "JobLog" && o.chunk.includes("started")),
          Stream.runDrain
        )
        yield* rpc.Jobs.Cancel({ jobId: job.id })
        yield* rpc.Jobs.Logs({ jobId: job.id, follow: true }).pipe(Stream.runDrain)
        expect((yield* rpc.Jobs.Get({ jobId: job.id })).status).toBe("canceled")
        expect(Processes.ofJob(job.id)).toEqual([])
      })
    )
  }
)
