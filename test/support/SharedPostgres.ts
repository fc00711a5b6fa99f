/**
 * Vitest's global set-up: when `DATABASE_URL` is unset, one embedded Postgres for the whole run
 * (started once, stopped at the end) instead of one per test file. Each suite still gets a
 * database of its own on it (`TestDatabase.freshDatabase`), so isolation is unchanged.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect, Exit, Redacted, Scope } from "effect"
import type { TestProject } from "vitest/node"
import * as PgSupervisor from "../../actors/supervisors/PgSupervisor.js"

declare module "vitest" {
  export interface ProvidedContext {
    /** The shared embedded Postgres's URL, or "" when suites use `DATABASE_URL`. */
    readonly sharedPostgresUrl: string
  }
}

/** The run's one server, shared by the projects' set-ups (each project loads this file anew). */
interface Shared {
  readonly url: Promise<string>
  readonly stop: () => Promise<void>
  users: number
}
const key = Symbol.for("vibes.test.sharedPostgres")
const holder = globalThis as { [key]?: Shared }

const startShared = (): Shared => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vibes-test-pg-"))
  const scope = Effect.runSync(Scope.make())
  const url = Effect.runPromise(
    PgSupervisor.make({ dataDir: dir, maxRestarts: 3 }).pipe(
      Scope.extend(scope),
      Effect.map((supervisor) => Redacted.value(supervisor.url))
    )
  )
  return {
    url,
    users: 0,
    stop: async () => {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const external = process.env["DATABASE_URL"]
  if (external !== undefined && external !== "") {
    project.provide("sharedPostgresUrl", "")
    return async () => {}
  }
  const shared = (holder[key] ??= startShared())
  shared.users++
  project.provide("sharedPostgresUrl", await shared.url)
  return async () => {
    if (--shared.users > 0) return
    delete holder[key]
    await shared.stop()
  }
}
