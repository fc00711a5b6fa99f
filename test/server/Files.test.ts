import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as http from "node:http"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Chunk, Context, Effect, Layer, Stream } from "effect"
import * as Client from "../../rpc/Client.js"
import { DeleteFile, ListFiles, MakeDirectory, ReadFile, RenameFile } from "../../rpc/Files.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { AddWorkspace } from "../../rpc/Workspaces.js"
import { clientLayer } from "../support/Attach.js"
import { giveToPrograms, makeRepo } from "../support/GitRepo.js"
import * as TestServer from "../support/TestServer.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.start)

const client = Effect.flatMap(Node, (server) =>
  Effect.map(Layer.build(clientLayer(server.url, server.token)), Context.get(Client.VibesClient))
)

const request = (route: string, init: RequestInit = {}) =>
  Effect.flatMap(Node, (server) =>
    Effect.promise(async () => {
      const response = await fetch(`${server.url}${route}`, {
        ...init,
        headers: { authorization: `Bearer ${server.token}`, ...init.headers }
      })
      return {
        status: response.status,
        headers: response.headers,
        body: Buffer.from(await response.arrayBuffer())
      }
    })
  )

let counter = 0
const uniqueName = (base: string) => `${base}-${process.pid}-${++counter}`

const workspace = (rpc: Client.Client) =>
  Effect.gen(function* () {
    const repo = yield* makeRepo({ "README.md": "hello\n", "src/a.ts": "export const a = 1\n" })
    const info = yield* rpc.Workspaces.Add(AddWorkspace.make({ path: repo.path, name: uniqueName("files") }))
    return { repo, info }
  })

const sha256 = (bytes: Uint8Array) => crypto.createHash("sha256").update(bytes).digest("hex")

layer(NodeLive, { timeout: 180_000, excludeTestServices: true })("files", (it) => {
  it.scoped("upload and download are byte-exact; reads are ranged and streamed", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { info } = yield* workspace(rpc)
      const data = crypto.randomBytes(5 * 1024 * 1024 + 17)
      const q = `workspace=${info.name}`
      const put = yield* request(`/api/files/upload?${q}&path=assets/blob.bin`, { method: "PUT", body: data })
      expect(put.status).toBe(404)
      yield* rpc.Files.Mkdir(MakeDirectory.make({ workspace: info.name, path: "assets" }))
      const uploaded = yield* request(`/api/files/upload?${q}&path=assets/blob.bin`, {
        method: "PUT",
        body: data
      })
      expect(uploaded.status).toBe(201)
      expect(JSON.parse(uploaded.body.toString())).toMatchObject({
        sha256: sha256(data),
        size: data.length,
        type: "file"
      })
      expect(sha256(fs.readFileSync(path.join(info.path, "assets/blob.bin")))).toBe(sha256(data))
      const again = yield* request(`/api/files/upload?${q}&path=assets/blob.bin`, {
        method: "PUT",
        body: "x"
      })
      expect(again.status).toBe(409)
      expect(fs.statSync(path.join(info.path, "assets/blob.bin")).size).toBe(data.length)

      const downloaded = yield* request(`/api/files/download?${q}&path=assets/blob.bin`)
      expect(downloaded.status).toBe(200)
      expect(sha256(downloaded.body)).toBe(sha256(data))
      const ranged = yield* request(`/api/files/download?${q}&path=assets/blob.bin`, {
        headers: { range: "bytes=1000-1999" }
      })
      expect(ranged.status).toBe(206)
      expect(ranged.headers.get("content-range")).toBe(`bytes 1000-1999/${data.length}`)
      expect(ranged.body.equals(data.subarray(1000, 2000))).toBe(true)

      const chunks = Chunk.toReadonlyArray(
        yield* Stream.runCollect(
          rpc.Files.Read(
            ReadFile.make({ workspace: info.name, path: "assets/blob.bin", offset: 100, length: 200_000 })
          )
        )
      )
      expect(chunks.length).toBeGreaterThan(1)
      expect(chunks[0]?.offset).toBe(100)
      expect(Buffer.concat(chunks.map((c) => c.data)).equals(data.subarray(100, 200_100))).toBe(true)
      // A declared length over the limit is refused before a byte of the body is read.
      const server = yield* Node
      const tooLarge = yield* Effect.async<number>((resume) => {
        const url = new URL(`${server.url}/api/files/upload?${q}&path=huge.bin`)
        const sent = http.request(
          url,
          {
            method: "PUT",
            headers: {
              authorization: `Bearer ${server.token}`,
              "content-length": String(3 * 1024 * 1024 * 1024)
            }
          },
          (response) => {
            response.resume()
            resume(Effect.succeed(response.statusCode ?? 0))
            sent.destroy()
          }
        )
        sent.on("error", () => undefined)
        sent.write("x")
      })
      expect(tooLarge).toBe(413)
      expect(fs.existsSync(path.join(info.path, "huge.bin"))).toBe(false)
    })
  )

  it.scoped(
    "every escape is refused with PathRefused, over RPC and REST, and nothing outside is touched",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { repo, info } = yield* workspace(rpc)
        const outside = path.join(repo.root, "outside.txt")
        fs.writeFileSync(outside, "secret\n")
        fs.symlinkSync("/", path.join(info.path, "to-root"))
        fs.symlinkSync(outside, path.join(info.path, "to-secret"))
        fs.symlinkSync(repo.root, path.join(info.path, "up"))
        giveToPrograms(info.path)
        const escapes: ReadonlyArray<readonly [string, string]> = [
          ["/etc/passwd", "absolute"],
          ["../outside.txt", "parent"],
          ["src/../../outside.txt", "parent"],
          ["src/a.ts\u0000", "nul"],
          ["%2e%2e/outside.txt", "encoded"],
          ["..%2Foutside.txt", "encoded"],
          ["to-root/etc/passwd", "outside"],
          ["up/outside.txt", "outside"],
          ["to-secret", "symlink"]
        ]
        for (const [relative, reason] of escapes) {
          const read = yield* Effect.flip(
            Stream.runDrain(rpc.Files.Read(ReadFile.make({ workspace: info.name, path: relative })))
          )
          expect(read, relative).toMatchObject({ _tag: "PathRefused", reason })
          const viaRest = yield* request(
            `/api/files/download?workspace=${info.name}&path=${encodeURIComponent(relative)}`
          )
          expect(viaRest.status, relative).toBe(400)
          expect(JSON.parse(viaRest.body.toString()), relative).toMatchObject({
            error: "PathRefused",
            reason
          })
        }
        const listed = yield* Effect.flip(
          rpc.Files.List(ListFiles.make({ workspace: info.name, path: "to-root/etc" }))
        )
        expect(listed).toMatchObject({ _tag: "PathRefused", reason: "outside" })
        const written = yield* request(
          `/api/files/upload?workspace=${info.name}&path=up/outside.txt&overwrite=1`,
          {
            method: "PUT",
            body: "overwritten"
          }
        )
        expect(written.status).toBe(400)
        const renamed = yield* Effect.flip(
          rpc.Files.Rename(RenameFile.make({ workspace: info.name, from: "README.md", to: "up/stolen.md" }))
        )
        expect(renamed._tag).toBe("PathRefused")
        const deleted = yield* Effect.flip(
          rpc.Files.Delete(DeleteFile.make({ workspace: info.name, path: "up/outside.txt" }))
        )
        expect(deleted._tag).toBe("PathRefused")
        const made = yield* Effect.flip(
          rpc.Files.Mkdir(MakeDirectory.make({ workspace: info.name, path: "to-root/tmp/x" }))
        )
        expect(made._tag).toBe("PathRefused")
        expect(fs.readFileSync(outside, "utf8")).toBe("secret\n")
        expect(fs.existsSync(path.join(repo.root, "stolen.md"))).toBe(false)
        // Deleting the link removes the link, not what it points to.
        yield* rpc.Files.Delete(DeleteFile.make({ workspace: info.name, path: "to-secret" }))
        expect(fs.readFileSync(outside, "utf8")).toBe("secret\n")
      })
  )

  it.scoped("a directory of 100,000 files is listed in bounded pages; mkdir, rename, stat and delete", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const { info } = yield* workspace(rpc)
      const big = path.join(info.path, "big")
      fs.mkdirSync(big)
      for (let i = 0; i < 100_000; i++) fs.writeFileSync(path.join(big, `f${String(i).padStart(6, "0")}`), "")
      const page = yield* rpc.Files.List(
        ListFiles.make({ workspace: info.name, path: "big", offset: 99_990, limit: 1000 })
      )
      expect(page.total).toBe(100_000)
      expect(page.entries.map((e) => e.name)).toEqual(
        Array.from({ length: 10 }, (_, i) => `f${String(99_990 + i).padStart(6, "0")}`)
      )
      const root = yield* rpc.Files.List(ListFiles.make({ workspace: info.name }))
      expect(root.entries.map((e) => `${e.type} ${e.path}`)).toEqual([
        "directory .git",
        "file README.md",
        "directory big",
        "directory src"
      ])

      yield* rpc.Files.Mkdir(
        MakeDirectory.make({ workspace: info.name, path: "docs/guide/deep", parents: true })
      )
      const moved = yield* rpc.Files.Rename(
        RenameFile.make({ workspace: info.name, from: "README.md", to: "docs/README.md" })
      )
      expect(moved).toMatchObject({ path: "docs/README.md", type: "file", size: 6 })
      const exists = yield* Effect.flip(
        rpc.Files.Rename(RenameFile.make({ workspace: info.name, from: "src/a.ts", to: "docs/README.md" }))
      )
      expect(exists._tag).toBe("FileExists")
      expect((yield* rpc.Files.Stat({ workspace: info.name, path: "docs/guide" })).type).toBe("directory")
      const notEmpty = yield* Effect.flip(
        rpc.Files.Delete(DeleteFile.make({ workspace: info.name, path: "docs" }))
      )
      expect(notEmpty._tag).toBe("InvalidFileRequest")
      yield* rpc.Files.Delete(DeleteFile.make({ workspace: info.name, path: "docs", recursive: true }))
      const gone = yield* Effect.flip(rpc.Files.Stat({ workspace: info.name, path: "docs" }))
      expect(gone._tag).toBe("FileNotFound")
      const root2 = yield* Effect.flip(rpc.Files.Delete(DeleteFile.make({ workspace: info.name, path: "" })))
      expect(root2._tag).toBe("PathRefused")
    })
  )

  it.scoped(
    "a session's files are its worktree's, and what vibes writes there belongs to the session's account",
    () =>
      Effect.gen(function* () {
        const rpc = yield* client
        const { info } = yield* workspace(rpc)
        const session = yield* rpc.Sessions.Create(
          CreateSession.make({
            workspace: info.name,
            branch: "agent",
            command: "sh",
            args: ["-c", "echo made > by-agent.txt"]
          })
        )
        yield* rpc.Sessions.Attach({ sessionId: session.id, readOnly: true }).pipe(Stream.runDrain)
        const page = yield* rpc.Files.List(ListFiles.make({ session: session.id }))
        expect(page.entries.map((e) => e.name)).toContain("by-agent.txt")
        const uploaded = yield* request(`/api/files/upload?session=${session.id}&path=from-user.txt`, {
          method: "PUT",
          body: "hi\n"
        })
        expect(uploaded.status).toBe(201)
        const agentFile = fs.statSync(path.join(session.cwd, "by-agent.txt"))
        const userFile = fs.statSync(path.join(session.cwd, "from-user.txt"))
        expect([userFile.uid, userFile.gid]).toEqual([agentFile.uid, agentFile.gid])
      })
  )

  it.scoped("vibes files put, ls, cat, get, mv and rm; a path that escapes exits 2", () =>
    Effect.gen(function* () {
      const rpc = yield* client
      const server = yield* Node
      const { info } = yield* workspace(rpc)
      const vibes = (args: ReadonlyArray<string>) =>
        Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
      const local = yield* tempDir("vibes-files-cli-")
      const data = crypto.randomBytes(300_000)
      fs.writeFileSync(path.join(local, "in.bin"), data)
      const put = yield* vibes([
        "files",
        "put",
        "--workspace",
        info.name,
        path.join(local, "in.bin"),
        "data.bin"
      ])
      expect(put.stderr).toBe("")
      expect(put.stdout).toBe(`${sha256(data)}  data.bin\n`)
      const ls = yield* vibes(["files", "ls", "--workspace", info.name])
      expect(ls.stdout).toMatch(/^file\s+300000\s+\S+\s+data\.bin$/m)
      const cat = yield* vibes(["files", "cat", "--workspace", info.name, "README.md"])
      expect(cat.stdout).toBe("hello\n")
      const out = path.join(local, "out.bin")
      const get = yield* vibes(["files", "get", "--workspace", info.name, "-o", out, "data.bin"])
      expect(get.code).toBe(0)
      expect(sha256(fs.readFileSync(out))).toBe(sha256(data))
      expect((yield* vibes(["files", "mv", "--workspace", info.name, "data.bin", "moved.bin"])).code).toBe(0)
      expect((yield* vibes(["files", "rm", "--workspace", info.name, "moved.bin"])).code).toBe(0)
      expect(fs.existsSync(path.join(info.path, "moved.bin"))).toBe(false)
      const escape = yield* vibes(["files", "cat", "--workspace", info.name, "../outside"])
      expect(escape.code).toBe(2)
      expect(escape.stderr).toContain("'..' segment")
      const missing = yield* vibes([
        "files",
        "get",
        "--workspace",
        info.name,
        "-o",
        path.join(local, "x"),
        "nope"
      ])
      expect(missing.code).toBe(1)
      expect(missing.stderr).toContain('nothing at "nope"')
    })
  )
})
