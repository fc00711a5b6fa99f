/**
 * A real S3-protocol server for tests: `s3rver` (from the npm registry) in a child process on a
 * free loopback port, with its objects in a temporary directory and one bucket made at start;
 * stopped when the scope closes.
 */
import { spawn } from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Option, Redacted } from "effect"
import type { S3Settings } from "../../infra/storage/S3Storage.js"
import { scopedChild } from "./Processes.js"
import { tempDir } from "./TempDir.js"

const main = path.join(path.dirname(fileURLToPath(import.meta.url)), "s3rver-main.mjs")

/** The bucket every test server has. */
export const bucket = "vibes-test"

/** Starts a server for the life of the scope; the settings reach its bucket (path-style). */
export const start = Effect.gen(function* () {
  const dir = yield* tempDir("vibes-s3-")
  const child = yield* scopedChild(
    () =>
      spawn(process.execPath, ["--openssl-legacy-provider", main, dir, bucket], {
        stdio: ["ignore", "pipe", "inherit"]
      }),
    "5 seconds"
  )
  const port = yield* Effect.async<number, Error>((resume) => {
    let seen = ""
    child.stdout.on("data", (data: Buffer) => {
      seen += data.toString("utf8")
      const match = /listening (\d+)/.exec(seen)
      if (match?.[1] !== undefined) resume(Effect.succeed(Number(match[1])))
    })
    child.once("exit", (code) =>
      resume(Effect.fail(new Error(`s3rver exited with ${code} before listening`)))
    )
  }).pipe(Effect.timeout("30 seconds"))
  const settings: S3Settings = {
    endpoint: Option.some(`http://127.0.0.1:${port}`),
    region: "us-east-1",
    bucket,
    forcePathStyle: true,
    accessKeyId: Option.some(Redacted.make("S3RVER")),
    secretAccessKey: Option.some(Redacted.make("S3RVER"))
  }
  return { settings, dir }
})
