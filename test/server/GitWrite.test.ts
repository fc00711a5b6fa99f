import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Context, Effect, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { EventFilter, type StoredEvent } from "../../rpc/Events.js"
import { CheckoutRequest, CommitRequest, DiffRequest } from "../../rpc/Git.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { AddWorkspace } from "../../rpc/Workspaces.js"
import { clientLayer } from "../support/Attach.js"
import { git, giveToPrograms, makeRepo } from "../support/GitRepo.js"
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

let counter = 0
const uniqueName = (base: string) => `${base}-${process.pid}-${++counter}`

const workspace = (rpc: Client.Client, files?: Readonly<Record<string, string>>) =>
  Effect.gen(function* () {
    const repo = yield* makeRepo(files)
    const info = yield* rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name: uniqueName("gw") }))
    return { repo, info }
  })

/** Events after offset `after` until `done` holds for what came. */
const eventsUntil = (
  rpc: Client.Client,
  after: number,
  done: (events: ReadonlyArray<StoredEvent>) => boolean
) =>
  rpc.Events.Subscribe({
    from: { _tag: "Offset", offset: after + 1 },
    filter: EventFilter.make({ types: ["git.**"] })
  }).pipe(
    Stream.scan([] as ReadonlyArray<StoredEvent>, (all, event) => [...all, event]),
    Stream.takeUntil(done),
    Stream.runLast,
    Effect.map((last) => (last._tag === "Some" ? last.value : [])),
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => new Error("the events did not come") })
  )

/** Writes a file as the programs' account would. */
const write = (dir: string, name: string, content: string) => {
  fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true })
  fs.writeFileSync(path.join(dir, name), content)
  giveToPrograms(dir)
}

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })(
  "git commit, checkout and working-tree diffs",
  (it) => {
    it.scoped(
      "a commit through the service takes every change with all, is a git.commit event, and refuses an empty one",
      () =>
        Effect.gen(function* () {
          const rpc = yield* client
          const { info } = yield* workspace(rpc, { "README.md": "hello\n", "gone.txt": "bye\n" })
          const session = yield* rpc.Sessions.Create(
            CreateSession.make({ workspace: info.name, branch: "agent", command: "sleep", args: ["600"] })
          )
          const dir = path.join(info.worktreesDir, "agent")
          write(dir, "README.md", "hello again\n")
          write(dir, "src/new.ts", "export const x = 1\n")
          fs.rmSync(path.join(dir, "gone.txt"))

          const staged = yield* Effect.flip(
            rpc.Git.Commit(CommitRequest.make({ session: session.id, message: "nothing staged" }))
          )
          expect(staged).toMatchObject({ _tag: "NothingToCommit", path: dir })

          const head = (yield* rpc.Events.Head()).head
          const made = yield* rpc.Git.Commit(
            CommitRequest.make({ session: session.id, message: "agent work\n\nwith a body", all: true })
          )
          expect(made).toMatchObject({ path: dir, branch: "agent" })
          expect(made.commit.subject).toBe("agent work")
          expect(git(dir, "rev-parse", "HEAD")).toBe(made.commit.commit)
          expect(git(dir, "status", "--porcelain")).toBe("")
          expect(git(dir, "show", "--name-status", "--format=", "HEAD").split("\n").sort()).toEqual([
            "A\tsrc/new.ts",
            "D\tgone.txt",
            "M\tREADME.md"
          ])
          const events = yield* eventsUntil(rpc, head, (all) =>
            all.some(
              (event) =>
                event.type === "git.commit" &&
                (event.data as { commit?: string }).commit === made.commit.commit
            )
          )
          const event = events.find((e) => e.type === "git.commit")
          expect(event?.sessionId).toBe(session.id)
          expect(event?.data).toMatchObject({ workspace: info.name, branch: "agent", subject: "agent work" })

          const again = yield* Effect.flip(
            rpc.Git.Commit(CommitRequest.make({ session: session.id, message: "again", all: true }))
          )
          expect(again._tag).toBe("NothingToCommit")
          yield* rpc.Sessions.Close({ sessionId: session.id })
        })
    )

    it.scoped("unmerged paths refuse a commit and a checkout with GitConflict; nothing changes", () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { repo, info } = yield* workspace(rpc)
        git(repo.path, "checkout", "-q", "-b", "side")
        fs.writeFileSync(path.join(repo.path, "README.md"), "side\n")
        git(repo.path, "commit", "-q", "-am", "side")
        git(repo.path, "checkout", "-q", "main")
        fs.writeFileSync(path.join(repo.path, "README.md"), "main\n")
        git(repo.path, "commit", "-q", "-am", "main")
        expect(() => git(repo.path, "merge", "-q", "side")).toThrow()
        giveToPrograms(repo.root)
        const before = git(repo.path, "rev-parse", "HEAD")

        const commit = yield* Effect.flip(
          rpc.Git.Commit(CommitRequest.make({ workspace: info.name, message: "merge", all: true }))
        )
        expect(commit).toMatchObject({ _tag: "GitConflict", paths: ["README.md"] })
        const checkout = yield* Effect.flip(
          rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "side" }))
        )
        expect(checkout).toMatchObject({ _tag: "GitConflict", paths: ["README.md"] })
        expect(git(repo.path, "rev-parse", "HEAD")).toBe(before)
        expect(git(repo.path, "status", "--porcelain")).toBe("UU README.md")
      })
    )

    it.scoped(
      "a checkout switches the main checkout, refuses a dirty one, a branch in use and a session's worktree",
      () =>
        Effect.gen(function* () {
          const rpc = yield* client
          const { repo, info } = yield* workspace(rpc)
          git(repo.path, "branch", "side")
          giveToPrograms(repo.root)

          const head = (yield* rpc.Events.Head()).head
          const done = yield* rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "side" }))
          expect(done).toMatchObject({ path: repo.path, branch: "side", created: false })
          expect(git(repo.path, "symbolic-ref", "--short", "HEAD")).toBe("side")
          const events = yield* eventsUntil(rpc, head, (all) =>
            all.some((e) => e.type === "git.branch_switched")
          )
          expect(events.find((e) => e.type === "git.branch_switched")?.data).toMatchObject({
            path: repo.path,
            from: "main",
            to: "side"
          })

          const created = yield* rpc.Git.Checkout(
            CheckoutRequest.make({ workspace: info.name, to: "fresh", create: true, from: "main" })
          )
          expect(created).toMatchObject({ branch: "fresh", created: true })
          const exists = yield* Effect.flip(
            rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "fresh", create: true }))
          )
          expect(exists).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "to" })
          const missing = yield* Effect.flip(
            rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "nope" }))
          )
          expect(missing).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "to" })
          const badName = yield* Effect.flip(
            rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "a..b" }))
          )
          expect(badName._tag).toBe("InvalidBranchName")

          write(repo.path, "README.md", "edited\n")
          const dirty = yield* Effect.flip(
            rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "main" }))
          )
          expect(dirty).toMatchObject({ _tag: "WorktreeDirty", path: repo.path })
          expect(git(repo.path, "symbolic-ref", "--short", "HEAD")).toBe("fresh")
          expect(fs.readFileSync(path.join(repo.path, "README.md"), "utf8")).toBe("edited\n")
          git(repo.path, "checkout", "-q", "--", "README.md")

          const session = yield* rpc.Sessions.Create(
            CreateSession.make({ workspace: info.name, branch: "taken", command: "sleep", args: ["600"] })
          )
          const inUse = yield* Effect.flip(
            rpc.Git.Checkout(CheckoutRequest.make({ workspace: info.name, to: "taken" }))
          )
          expect(inUse).toMatchObject({ _tag: "PathInUse", path: path.join(info.worktreesDir, "taken") })
          const ownWorktree = yield* Effect.flip(
            rpc.Git.Checkout(CheckoutRequest.make({ session: session.id, to: "main" }))
          )
          expect(ownWorktree).toMatchObject({ _tag: "InvalidWorkspaceRequest", field: "to" })
          expect(git(path.join(info.worktreesDir, "taken"), "symbolic-ref", "--short", "HEAD")).toBe("taken")
          yield* rpc.Sessions.Close({ sessionId: session.id })
        })
    )

    it.scoped(
      "vibes git commit and vibes git checkout",
      () =>
        Effect.gen(function* () {
          const rpc = yield* client
          const { repo, info } = yield* workspace(rpc)
          write(repo.path, "notes.txt", "a note\n")
          const committed = yield* vibes([
            "git",
            "commit",
            "--workspace",
            info.name,
            "-m",
            "add notes",
            "--all"
          ])
          expect(committed.code).toBe(0)
          expect(committed.stdout).toMatch(/^\[main [0-9a-f]{12}\] add notes\n$/)
          const empty = yield* vibes(["git", "commit", "--workspace", info.name, "-m", "again"])
          expect(empty.code).toBe(1)
          expect(empty.stderr).toContain("nothing is staged")

          const created = yield* vibes(["git", "checkout", "--workspace", info.name, "--create", "topic"])
          expect(created.code).toBe(0)
          expect(created.stdout).toContain("on new branch topic")
          write(repo.path, "notes.txt", "changed\n")
          const dirty = yield* vibes(["git", "checkout", "--workspace", info.name, "main"])
          expect(dirty.code).toBe(1)
          expect(dirty.stderr).toContain("uncommitted changes")
          expect(git(repo.path, "symbolic-ref", "--short", "HEAD")).toBe("topic")
          const usage = yield* vibes(["git", "checkout", "--workspace", info.name, "bad..name"])
          expect(usage.code).toBe(2)
        }),
      // Several CLI runs (a Node start each): slow on a loaded machine.
      180_000
    )

    it.scoped(
      "a working-tree diff shows untracked files as new ones, binary ones as binary, paged after the tracked changes",
      () =>
        Effect.gen(function* () {
          const rpc = yield* client
          const { repo, info } = yield* workspace(rpc, { "README.md": "hello\n", "a.txt": "a\n" })
          write(repo.path, "a.txt", "a changed\n")
          write(repo.path, "dir/new.ts", "export const one = 1\nexport const two = 2\n")
          fs.writeFileSync(path.join(repo.path, "blob.bin"), Buffer.from([0, 159, 146, 150, 0, 1]))
          fs.symlinkSync("/etc/passwd", path.join(repo.path, "escape"))
          fs.writeFileSync(path.join(repo.path, "big.txt"), Buffer.alloc(17 * 1024 * 1024, 97))
          giveToPrograms(repo.root)

          const all = yield* rpc.Git.Diff(DiffRequest.make({ workspace: info.name }))
          expect(all.total).toBe(5)
          expect(all.files.map((f) => f.path)).toEqual([
            "a.txt",
            "big.txt",
            "blob.bin",
            "dir/new.ts",
            "escape"
          ])
          expect(all.files[0]).toMatchObject({ untracked: false, added: 1, deleted: 1 })
          const added = all.files.find((f) => f.path === "dir/new.ts")
          expect(added).toMatchObject({
            untracked: true,
            added: 2,
            deleted: 0,
            binary: false,
            truncated: false
          })
          expect(added?.patch).toContain("new file mode 100644")
          expect(added?.patch).toContain(
            "+++ b/dir/new.ts\n@@ -0,0 +1,2 @@\n+export const one = 1\n+export const two = 2\n"
          )
          expect(all.files.find((f) => f.path === "blob.bin")).toMatchObject({
            untracked: true,
            binary: true,
            patch: null
          })
          const link = all.files.find((f) => f.path === "escape")
          expect(link?.patch).toContain("new file mode 120000")
          expect(link?.patch).toContain("+/etc/passwd")
          expect(link?.patch).not.toContain("root:")
          expect(all.files.find((f) => f.path === "big.txt")).toMatchObject({
            untracked: true,
            patch: null,
            truncated: true
          })

          const pages: Array<string> = []
          for (let offset = 0; offset < 5; offset += 2) {
            const page = yield* rpc.Git.Diff(DiffRequest.make({ workspace: info.name, offset, limit: 2 }))
            expect(page.total).toBe(5)
            pages.push(...page.files.map((f) => f.path))
          }
          expect(pages).toEqual(all.files.map((f) => f.path))
          const cli = yield* vibes(["git", "diff", "--workspace", info.name, "--stat"])
          expect(cli.stdout).toContain("+2\t-0\tdir/new.ts\t(untracked)\n")
          expect(cli.stdout).toContain("binary\tblob.bin\t(untracked)\n")
        })
    )
  }
)
