/**
 * The package as people install it: `npm pack` in a clean copy of the sources (it builds), then
 * `npm install -g` of the tarball into a temporary prefix, and the installed `vibes serve` runs with
 * its embedded Postgres and serves the web UI.
 */
import * as childProcess from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { cookieName } from "../../rpc/Auth.js"
import * as FreePort from "../../infra/net/FreePort.js"
import { runningHostPid } from "../../infra/pty/PtyHostRpcs.js"
import { tempDir } from "../support/TempDir.js"
import * as Vibes from "../support/VibesProcess.js"

const root = path.resolve(".")

/** Top-level entries of the checkout that are not sources. */
const notSources = new Set(["node_modules", "dist", ".git", "test-results"])

/** The environment of npm: this one without what an npm that started the tests set for its scripts. */
const npmEnv = (): NodeJS.ProcessEnv =>
  Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith("npm_") && !name.startsWith("NPM_"))
  )

const npm = (args: ReadonlyArray<string>, cwd: string) =>
  Effect.async<{ readonly code: number | null; readonly output: string }>((resume) => {
    const child = childProcess.spawn("npm", args, { cwd, env: npmEnv(), stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString("utf8")))
    child.once("close", (code) => resume(Effect.succeed({ code, output })))
    return Effect.sync(() => child.kill("SIGKILL"))
  })

const fetchText = (url: string) =>
  Effect.promise(async () => {
    const response = await fetch(url, { redirect: "manual" })
    return {
      status: response.status,
      type: response.headers.get("content-type"),
      body: await response.text()
    }
  })

it.scopedLive(
  "npm pack makes a tarball that npm install -g puts on a machine, and its vibes serve runs with the embedded Postgres and the web UI",
  () =>
    Effect.gen(function* () {
      const work = yield* tempDir("vibes-install-")
      // A clean copy of the sources, building with the checkout's packages.
      const sources = path.join(work, "sources")
      fs.mkdirSync(sources)
      for (const entry of fs.readdirSync(root)) {
        if (!notSources.has(entry))
          fs.cpSync(path.join(root, entry), path.join(sources, entry), { recursive: true })
      }
      fs.symlinkSync(path.join(root, "node_modules"), path.join(sources, "node_modules"))
      const tarballs = path.join(work, "tarballs")
      fs.mkdirSync(tarballs)
      const packed = yield* npm(["pack", "--pack-destination", tarballs], sources)
      expect(packed.code, packed.output).toBe(0)
      const { version } = Vibes.packageJson()
      const tarball = path.join(tarballs, `vibes-${version}.tgz`)
      expect(fs.existsSync(tarball)).toBe(true)

      // Installed from the tarball alone, in a directory with nothing else in it.
      const prefix = path.join(work, "prefix")
      const clean = path.join(work, "clean")
      fs.mkdirSync(clean)
      const installed = yield* npm(
        ["install", "-g", "--prefix", prefix, "--no-audit", "--no-fund", tarball],
        clean
      )
      expect(installed.code, installed.output).toBe(0)
      const vibes = path.join(prefix, "bin", "vibes")
      const versionRun = yield* Effect.sync(() =>
        childProcess.spawnSync(vibes, ["--version"], { encoding: "utf8" })
      )
      expect(versionRun.stdout.trim()).toBe(version)
      const packageDir = path.join(prefix, "lib", "node_modules", "vibes")
      expect(fs.existsSync(path.join(packageDir, "src"))).toBe(false)
      expect(fs.existsSync(path.join(packageDir, "dist", "web", "index.html"))).toBe(true)

      const dataDir = path.join(work, "data")
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => Option.map(runningHostPid(dataDir), (pid) => process.kill(pid, "SIGKILL")))
      )
      const port = yield* FreePort.find()
      const server = yield* Vibes.serve(dataDir, Vibes.childEnv({ DATABASE_URL: undefined }), port, {
        command: [vibes],
        cwd: clean
      })
      expect(server.url).toBe(`http://127.0.0.1:${port}`)
      const health = yield* fetchText(`${server.url}/healthz`)
      expect(health).toMatchObject({ status: 200, body: '{"status":"ok"}' })
      const ready = yield* Effect.promise(() =>
        fetch(`${server.url}/readyz`, {
          headers: {
            authorization: `Bearer ${fs.readFileSync(path.join(dataDir, "admin-token"), "utf8").trim()}`
          }
        }).then((response) => response.json())
      )
      expect(ready).toMatchObject({ status: "ready", database: "embedded" })
      // The login URL sets the cookie; with it, / is the built UI (not the "UI missing" page).
      const login = yield* Effect.promise(() => fetch(server.loginUrl, { redirect: "manual" }))
      expect(login.status).toBe(303)
      const cookie =
        login.headers
          .getSetCookie()
          .map((header) => header.split(";")[0] ?? "")
          .find((pair) => pair.startsWith(`${cookieName}=`)) ?? ""
      expect(cookie).not.toBe("")
      const page = yield* Effect.promise(async () => {
        const response = await fetch(`${server.url}/`, { headers: { cookie } })
        return { status: response.status, body: await response.text() }
      })
      expect(page.status).toBe(200)
      const script = /src="(\/assets\/[^"]+\.js)"/.exec(page.body)?.[1]
      expect(script).toBeDefined()
      const asset = yield* Effect.promise(() =>
        fetch(`${server.url}${script ?? ""}`, { headers: { cookie } })
      )
      expect(asset.status).toBe(200)
      expect(asset.headers.get("content-type")).toContain("javascript")
    }),
  600_000
)
