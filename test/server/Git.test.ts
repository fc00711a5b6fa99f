import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { DiffRequest, LogRequest } from "../../rpc/Git.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { AddWorkspace } from "../../rpc/Workspaces.js"
import { clientLayer } from "../support/Attach.js"
import { git, makeRepo } from "../support/GitRepo.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.start)

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, (server) =>
    Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
  )

const rest = (route: string) =>
  Effect.flatMap(Node, (server) =>
    Effect.promise(async () => {
      const response = await fetch(`${server.url}${route}`, {
        headers: { authorization: `Bearer ${server.token}` }
      })
      return { status: response.status, body: (await response.json()) as Record<string, unknown> }
    })
  )

let counter = 0
const uniqueName = (base: string) => `${base}-${process.pid}-${++counter}`

const workspace = (rpc: Client.Client, files?: Readonly<Record<string, string>>) =>
  Effect.gen(function* () {
    const repo = yield* makeRepo(files)
    const info = yield* rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name: uniqueName("git") }))
    return { repo, info }
  })

/** Events of `types` after offset `after` until `done` holds for what came. */
const eventsUntil = (
  rpc: Client.Client,
  after: number,
  filter: Partial<ConstructorParameters<typeof EventFilter>[0]>,
  done: (events: ReadonlyArray<StoredEvent>) => boolean
) =>
  rpc.Events.Subscribe({
    from: { _tag: "Offset", offset: after + 1 },
    filter: EventFilter.make(filter)
  }).pipe(
    Stream.scan([] as ReadonlyArray<StoredEvent>, (all, event) => [...all, event]),
    Stream.takeUntil(done),
    Stream.runLast,
    Effect.map((last) => (last._tag === "Some" ? last.value : [])),
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("the events did not come") })
  )

/** A finished session on `branch` of `name`: its worktree is there, kept. */
const worktreeOf = (rpc: Client.Client, name: string, branch: string) =>
  Effect.gen(function* () {
    const info = yield* rpc.Sessions.Create(CreateSession.make({ workspace: name, branch, command: "true" }))
    yield* rpc.Sessions.Attach({ sessionId: info.id, readOnly: true }).pipe(Stream.runDrain)
    return info
  })

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })("git service", (it) => {
  it.scoped("a commit made in a session's shell is a git.commit event that names the session", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { info } = yield* workspace(rpc)
      const head = (yield* rpc.Events.Head()).head
      const session = yield* rpc.Sessions.Create(
        CreateSession.make({ workspace: info.name, branch: "feat", command: "sh" })
      )
      yield* rpc.Sessions.Input({
        sessionId: session.id,
        data: new TextEncoder().encode("echo hi > hi.txt && git add hi.txt && git commit -q -m 'say hi'\r")
      })
      const events = yield* eventsUntil(rpc, head, { types: ["git.**"] }, (all) =>
        all.some((event) => event.type === "git.commit")
      )
      const commit = events.find((event) => event.type === "git.commit")
      expect(commit?.sessionId).toBe(session.id)
      expect(commit?.data).toMatchObject({
        workspace: info.name,
        branch: "feat",
        subject: "say hi",
        author: "Vibes Test"
      })
      expect(events.map((event) => event.type)).toContain("git.branch_created")
      expect(events.find((event) => event.type === "git.worktree_added")?.data).toMatchObject({
        path: path.join(info.worktreesDir, "feat"),
        branch: "feat"
      })
      yield* rpc.Sessions.Close({ sessionId: session.id })
    })
  )

  it.scoped("commits, branches, resets and checkouts made outside vibes are events too", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { repo } = yield* workspace(rpc)
      const step = (run: () => void, type: string) =>
        Effect.gen(function* () {
          const head = (yield* rpc.Events.Head()).head
          run()
          const events = yield* eventsUntil(rpc, head, { types: ["git.**"] }, (all) =>
            all.some((event) => event.type === type)
          )
          return events.find((event) => event.type === type)
        })
      const commit = yield* step(() => {
        fs.writeFileSync(path.join(repo.path, "by-hand.txt"), "x\n")
        git(repo.path, "add", "by-hand.txt")
        git(repo.path, "commit", "-q", "-m", "by hand")
      }, "git.commit")
      expect(commit?.data).toMatchObject({ branch: "main", subject: "by hand" })
      expect(commit?.sessionId).toBeUndefined()
      const created = yield* step(() => git(repo.path, "branch", "side"), "git.branch_created")
      expect(created?.data).toMatchObject({ branch: "side" })
      const moved = yield* step(() => git(repo.path, "reset", "-q", "--hard", "HEAD~1"), "git.branch_moved")
      expect(moved?.data).toMatchObject({ branch: "main", to: git(repo.path, "rev-parse", "HEAD") })
      const switched = yield* step(() => git(repo.path, "checkout", "-q", "side"), "git.branch_switched")
      expect(switched?.data).toMatchObject({ path: repo.path, from: "main", to: "side" })
    })
  )

  it.scoped(
    "status, diff against HEAD with a binary file, diff of a branch against its base, log and branches",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { info } = yield* workspace(rpc, { "README.md": "hello\n", "src/a.ts": "one\ntwo\n" })
        const session = yield* worktreeOf(rpc, info.name, "work")
        const dir = path.join(info.worktreesDir, "work")
        fs.writeFileSync(path.join(dir, "src/a.ts"), "one\n2\n")
        fs.writeFileSync(path.join(dir, "image.bin"), Buffer.from([0, 1, 2, 255, 0, 7]))
        git(dir, "add", "image.bin")
        fs.writeFileSync(path.join(dir, "new.txt"), "untracked\n")

        const status = yield* rpc.Git.Status({ workspace: info.name, branch: "work" })
        expect(status.branch).toBe("work")
        expect(status.entries.map((e) => `${e.index}${e.worktree} ${e.path}`).sort()).toEqual([
          ".M src/a.ts",
          "?? new.txt",
          "A. image.bin"
        ])
        const bySession = yield* rpc.Git.Status({ session: session.id })
        expect(bySession.path).toBe(dir)

        const diff = yield* rpc.Git.Diff(DiffRequest.make({ workspace: info.name, branch: "work" }))
        expect(diff.total).toBe(3)
        expect(diff.untracked).toEqual(["new.txt"])
        expect(diff.files.find((f) => f.path === "new.txt")).toMatchObject({
          untracked: true,
          added: 1,
          deleted: 0,
          binary: false
        })
        const binary = diff.files.find((f) => f.path === "image.bin")
        expect(binary).toMatchObject({ binary: true, patch: null, added: null })
        const text = diff.files.find((f) => f.path === "src/a.ts")
        expect(text).toMatchObject({ binary: false, added: 1, deleted: 1, truncated: false })
        expect(text?.patch).toContain("-two\n+2\n")

        git(dir, "add", "-A")
        git(dir, "commit", "-q", "-m", "work done")
        const against = yield* rpc.Git.Diff(DiffRequest.make({ session: session.id, against: "base" }))
        expect(against.from).toBe("main")
        expect(against.to).toBe("work")
        expect(against.files.map((f) => f.path).sort()).toEqual(["image.bin", "new.txt", "src/a.ts"])
        const logged = yield* rpc.Git.Log(LogRequest.make({ workspace: info.name, ref: "work" }))
        expect(logged.map((c) => c.subject)).toEqual(["work done", "initial"])
        expect(logged[0]?.parents).toEqual([logged[1]?.commit])
        const branches = yield* rpc.Git.Branches({ workspace: info.name })
        expect(branches.find((b) => b.name === "work")).toMatchObject({
          worktree: dir,
          sessionId: session.id,
          subject: "work done"
        })
        const missing = yield* Effect.flip(
          rpc.Git.Log(LogRequest.make({ workspace: info.name, ref: "nope" }))
        )
        expect(missing).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "ref" })
        const both = yield* Effect.flip(rpc.Git.Status({ workspace: info.name, session: session.id }))
        expect(both._tag).toBe("InvalidWorkspaceRequest")
      })
  )

  it.scoped("a large diff comes in pages; the REST API and vibes git diff answer the same", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const files = Object.fromEntries(
        Array.from({ length: 250 }, (_, i) => [`f/${String(i).padStart(3, "0")}.txt`, `${i}\n`])
      )
      const { info } = yield* workspace(rpc, files)
      yield* worktreeOf(rpc, info.name, "many")
      const dir = path.join(info.worktreesDir, "many")
      for (const name of Object.keys(files)) fs.appendFileSync(path.join(dir, name), "more\n")
      const seen: Array<string> = []
      for (let offset = 0; offset < 250; offset += 100) {
        const page = yield* rpc.Git.Diff(
          DiffRequest.make({ workspace: info.name, branch: "many", offset, limit: 100 })
        )
        expect(page.total).toBe(250)
        for (const file of page.files) {
          expect(file.patch).toContain("+more\n")
          seen.push(file.path)
        }
      }
      expect(seen).toEqual(Object.keys(files).sort())

      const viaRest = yield* rest(`/api/git/diff?workspace=${info.name}&branch=many&offset=200&limit=100`)
      expect(viaRest.status).toBe(200)
      expect((viaRest.body["files"] as ReadonlyArray<unknown>).length).toBe(50)
      expect((yield* rest(`/api/git/diff?workspace=${info.name}&limit=0`)).status).toBe(400)
      expect((yield* rest(`/api/git/diff?workspace=${info.name}&colour=1`)).status).toBe(400)
      expect((yield* rest(`/api/git/status?workspace=no-such-workspace`)).status).toBe(404)
      expect((yield* rest(`/api/workspaces/${info.name}`)).body).toMatchObject({ name: info.name })

      const cli = yield* vibes([
        "git",
        "diff",
        "--workspace",
        info.name,
        "--branch",
        "many",
        "--stat",
        "--limit",
        "2"
      ])
      expect(cli.code).toBe(0)
      expect(cli.stdout).toBe("+1\t-0\tf/000.txt\n+1\t-0\tf/001.txt\n[vibes: 248 more files: --offset 2]\n")
      const cliStatus = yield* vibes(["git", "status", "--workspace", info.name])
      expect(cliStatus.stdout).toBe(`${info.path}: on main\n`)
    })
  )
})
