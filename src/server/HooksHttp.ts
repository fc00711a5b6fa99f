/**
 * `POST /hooks/<name>`: inbound webhooks. This route is not behind the vibes token: the hook's
 * own secret is the credential, checked before the body is parsed. In order: the sender's address
 * is rate-limited per hook (429), the body is read under the hook's size cap (413), the signature
 * is verified (GitHub, Slack or Standard Webhooks; 401, the same for a name no hook has), the
 * delivery id must be new (a replay is answered 200 and does nothing), the body must fit the
 * action (400), and then the action runs: a job from the hook's template (202), text typed into a
 * session, or a new session. Every request, whatever became of it, is a `hook.received` event.
 */
import { Effect, Either, Metric, Option, Schema, Stream } from "effect"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { JobSpec } from "../../rpc/Jobs.js"
import type { HookAction } from "../../rpc/Notify.js"
import { CreateSession } from "../../rpc/Sessions.js"
import { Jobs } from "../../actors/job/Jobs.js"
import { Hooks } from "../../actors/notify/Hooks.js"
import type { Hook } from "../../actors/notify/NotifyStore.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import { tagged } from "../../infra/telemetry/MetricTags.js"
import { securityHeaders } from "../../infra/net/Headers.js"
import { json, rawBody } from "./JsonApi.js"
import { SessionsApi } from "./SessionsHandlers.js"

/** The body cap and rate of a name no hook has (it is refused anyway, after the same steps). */
const unknownLimits = { maxBodyBytes: 1024 * 1024, ratePerMinute: 60 }

/** The largest body passed to a job as `VIBES_HOOK_PAYLOAD`. */
const maxPayloadVariable = 64 * 1024

const requestsTotal = Metric.counter("vibes_hook_requests_total", {
  description: "Requests to inbound hooks, by hook (unknown: a name no hook has) and outcome",
  incremental: true
})

type Outcome = "accepted" | "refused" | "replayed" | "rate_limited" | "too_large" | "invalid" | "failed"

/** What the sender posted, as the action needs it. */
interface Parsed {
  /** The provider's event name (`X-GitHub-Event`, a Slack command, a JSON body's `type`). */
  readonly event: string
  /** Text for a session, when the body carries some (`text`). */
  readonly text: string | undefined
  /** Slack's URL verification: answered with its challenge, nothing else done. */
  readonly challenge: string | undefined
  /** Where a Slack slash command is answered later. */
  readonly responseUrl?: string | undefined
}

const JsonObject = Schema.Record({ key: Schema.String, value: Schema.Unknown })
const decodeObject = Schema.decodeUnknownEither(Schema.parseJson(JsonObject))
const SlackCommand = Schema.Struct({
  command: Schema.String.pipe(Schema.maxLength(100)),
  text: Schema.String.pipe(Schema.maxLength(64 * 1024)),
  response_url: Schema.optional(Schema.String.pipe(Schema.maxLength(2048)))
})
const decodeSlackCommand = Schema.decodeUnknownEither(SlackCommand)

const stringField = (record: Readonly<Record<string, unknown>>, key: string, max: number) => {
  const value = record[key]
  return typeof value === "string" && value.length <= max ? value : undefined
}

const utf8 = new TextDecoder("utf-8", { fatal: true })

/** Parses a verified body by its sender's conventions; a message when it does not fit. */
const parse = (hook: Hook, headers: Readonly<Record<string, string | undefined>>, body: Uint8Array) =>
  Either.gen(function* () {
    const text = yield* Either.try({
      try: () => utf8.decode(body),
      catch: () => "the body is not UTF-8 text"
    })
    const contentType = headers["content-type"] ?? ""
    if (hook.info.verify === "slack" && contentType.startsWith("application/x-www-form-urlencoded")) {
      const form = Object.fromEntries(new URLSearchParams(text))
      const command = yield* Either.mapLeft(
        decodeSlackCommand(form),
        () => "a Slack slash command needs 'command' and 'text' fields"
      )
      return {
        event: command.command,
        text: command.text,
        challenge: undefined,
        responseUrl: command.response_url
      } satisfies Parsed
    }
    const payload =
      hook.info.verify === "github" && contentType.startsWith("application/x-www-form-urlencoded")
        ? (new URLSearchParams(text).get("payload") ?? "")
        : text
    const object = yield* Either.mapLeft(decodeObject(payload), () => "the body is not a JSON object")
    if (hook.info.verify === "slack" && object["type"] === "url_verification") {
      return {
        event: "url_verification",
        text: undefined,
        challenge: stringField(object, "challenge", 200) ?? ""
      }
    }
    const event =
      hook.info.verify === "github"
        ? (headers["x-github-event"] ?? "unknown").slice(0, 100)
        : (stringField(object, "type", 100) ?? "message")
    return { event, text: stringField(object, "text", 64 * 1024), challenge: undefined } satisfies Parsed
  })

/** The variables a hook's job or session gets. */
const hookEnv = (
  hook: Hook,
  deliveryId: string,
  parsed: Parsed,
  body: Uint8Array
): Record<string, string> => ({
  VIBES_HOOK_NAME: hook.info.name,
  VIBES_HOOK_DELIVERY: deliveryId,
  VIBES_HOOK_EVENT: parsed.event,
  ...(parsed.text !== undefined ? { VIBES_HOOK_TEXT: parsed.text } : {}),
  ...(body.length <= maxPayloadVariable ? { VIBES_HOOK_PAYLOAD: Buffer.from(body).toString("utf8") } : {})
})

/** What a taken action answers, and what the event names. */
interface Taken {
  readonly status: number
  readonly body: Record<string, unknown>
  readonly jobId?: string
  readonly sessionId?: string
}

/** The most output a slash command's answer quotes (its end). */
const maxQuoted = 2500

/** Posts a Slack message to a command's response URL (a few tries: it is the only answer). */
const respond = (url: string, message: Record<string, unknown>) =>
  Effect.tryPromise(async (signal) => {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(message),
      redirect: "manual",
      signal: AbortSignal.any([signal, AbortSignal.timeout(10_000)])
    })
    await response.body?.cancel().catch(() => undefined)
    if (response.status >= 300) throw new Error(`HTTP ${response.status}`)
  }).pipe(
    Effect.retry({ times: 2 }),
    Effect.catchAll(() => Effect.logWarning("could not answer a Slack command at its response URL"))
  )

/** Follows job `jobId` to its end and answers in the channel with its status and output's end. */
const answerWhenDone = (jobs: Jobs["Type"], jobId: string, line: string, responseUrl: string) =>
  Effect.gen(function* () {
    let output = ""
    let summary = "ended"
    yield* jobs.logs(jobId, 0, true).pipe(
      Stream.runForEach((item) =>
        Effect.sync(() => {
          if (item._tag === "JobLog" && item.stream !== "system")
            output = (output + item.chunk).slice(-maxQuoted)
          if (item._tag === "JobDone")
            summary = `${item.status}${item.exitCode !== null ? ` (exit ${item.exitCode})` : ""}`
        })
      ),
      Effect.timeout("6 hours"),
      Effect.catchAll(() => Effect.sync(() => (summary = "could not be followed to its end")))
    )
    const fence = "```"
    const quoted = output.split(fence).join("'''").trimEnd()
    yield* respond(responseUrl, {
      response_type: "in_channel",
      text: `\`${line.slice(0, 200)}\` ${summary}${quoted !== "" ? `\n${fence}${quoted}${fence}` : ""}`
    })
  })

/** `/vibes run <line>` and `/vibes ls` from Slack. */
const slashCommand = (
  action: Extract<HookAction, { readonly _tag: "SlackCommand" }>,
  hook: Hook,
  parsed: Parsed,
  env: Record<string, string>
) =>
  Effect.gen(function* () {
    const jobs = yield* Jobs
    const hooks = yield* Hooks
    const text = (parsed.text ?? "").trim()
    const verb = text.split(/\s+/)[0] ?? ""
    const line = text.slice(verb.length).trim()
    const ephemeral = (message: string): Taken => ({
      status: 200,
      body: { response_type: "ephemeral", text: message }
    })
    if (verb === "ls") {
      const latest = yield* jobs.list(10, Option.none())
      return ephemeral(
        latest.length === 0
          ? "no jobs yet"
          : latest
              .map((job) => `${job.id.slice(-12)} ${job.status} ${job.spec.command.slice(0, 80)}`)
              .join("\n")
      )
    }
    if (verb !== "run" || line === "") return ephemeral("usage: /vibes run <command line> | /vibes ls")
    const responseUrl = parsed.responseUrl
    if (responseUrl === undefined || !responseUrl.startsWith(action.responseUrlPrefix)) {
      return yield* Effect.fail({
        _tag: "NoResponseUrl" as const,
        message: `the command's response_url must start with ${action.responseUrlPrefix}`
      })
    }
    const job = yield* jobs.submit(
      JobSpec.make({
        command: line,
        shell: true,
        env,
        labels: { hook: hook.info.name },
        ...(action.cwd !== undefined ? { cwd: action.cwd } : {}),
        ...(action.workspace !== undefined ? { workspace: action.workspace } : {})
      })
    )
    yield* hooks.background(answerWhenDone(jobs, job.id, line, responseUrl))
    return { ...ephemeral(`vibes started job ${job.id}; the result will follow here`), jobId: job.id }
  })

/** Runs `action` for a verified request. */
const act = (action: HookAction, hook: Hook, deliveryId: string, parsed: Parsed, body: Uint8Array) =>
  Effect.gen(function* () {
    const env = hookEnv(hook, deliveryId, parsed, body)
    switch (action._tag) {
      case "RunJob": {
        const jobs = yield* Jobs
        const spec = JobSpec.make({
          ...action.spec,
          env: { ...action.spec.env, ...env },
          labels: { ...action.spec.labels, hook: hook.info.name }
        })
        const job = yield* jobs.submit(spec)
        return {
          status: hook.info.verify === "slack" ? 200 : 202,
          body:
            hook.info.verify === "slack"
              ? { response_type: "ephemeral", text: `vibes started job ${job.id}` }
              : { accepted: true, jobId: job.id },
          jobId: job.id
        } satisfies Taken
      }
      case "SendText": {
        if (parsed.text === undefined)
          return yield* Effect.fail({ _tag: "NoText" as const, message: "the body has no 'text' to send" })
        const sessions = yield* SessionsApi
        yield* sessions["Sessions.Input"]({
          sessionId: action.sessionId,
          data: new TextEncoder().encode(parsed.text)
        })
        return {
          status: 200,
          body: { accepted: true, sessionId: action.sessionId },
          sessionId: action.sessionId
        } satisfies Taken
      }
      case "SlackCommand":
        return yield* slashCommand(action, hook, parsed, env)
      case "CreateSession": {
        const sessions = yield* SessionsApi
        const session = yield* sessions["Sessions.Create"](
          CreateSession.make({
            args: action.args,
            env,
            ...(action.command !== undefined ? { command: action.command } : {}),
            ...(action.name !== undefined ? { name: action.name } : {}),
            ...(action.workspace !== undefined ? { workspace: action.workspace } : {})
          })
        )
        return {
          status: 201,
          body: { accepted: true, sessionId: session.id },
          sessionId: session.id
        } satisfies Taken
      }
    }
  })

const refusedAnswer = () =>
  json(401, { error: "Unauthorized", message: "the request's signature does not verify for this hook" })

/** Handles `POST /hooks/<name>` from `clientAddress`. */
export const receive = (clientAddress: string) =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const params = yield* HttpRouter.params
    const hooks = yield* Hooks
    const emitter = yield* Emitter
    const name = (params["name"] ?? "").slice(0, 100)
    const hook = yield* hooks.find(name).pipe(Effect.orElseSucceed(() => Option.none<Hook>()))
    const label = Option.isSome(hook) ? hook.value.info.name : "unknown"
    const record = (
      outcome: Outcome,
      reason: string | null,
      deliveryId: string | null,
      ids: { readonly jobId?: string | undefined; readonly sessionId?: string | undefined } = {}
    ) =>
      Effect.zipRight(
        Effect.sync(() => tagged(requestsTotal, { hook: label, outcome }).unsafeUpdate(1, [])),
        emitter.emit(
          "hook.received",
          { hook: name.replace(/[^a-z0-9_-]/g, "?"), outcome, reason, deliveryId, clientAddress },
          {
            component: "hooks",
            severity: outcome === "accepted" || outcome === "replayed" ? "info" : "warn",
            ...(ids.jobId !== undefined ? { jobId: ids.jobId } : {}),
            ...(ids.sessionId !== undefined ? { sessionId: ids.sessionId } : {})
          }
        )
      )
    const limits = Option.match(hook, {
      onNone: () => ({ key: "unknown", ...unknownLimits }),
      onSome: (found) => ({ key: found.info.id, ...found.info })
    })
    const wait = hooks.take(limits.key, limits.ratePerMinute, clientAddress)
    if (wait > 0) {
      tagged(requestsTotal, { hook: label, outcome: "rate_limited" }).unsafeUpdate(1, [])
      if (hooks.recordLimited(limits.key, clientAddress)) {
        yield* emitter.emit(
          "hook.received",
          {
            hook: name.replace(/[^a-z0-9_-]/g, "?"),
            outcome: "rate_limited",
            reason: null,
            deliveryId: null,
            clientAddress
          },
          { component: "hooks", severity: "warn" }
        )
      }
      const seconds = Math.max(1, Math.ceil(wait))
      return HttpServerResponse.unsafeJson(
        { error: "TooManyRequests", message: `too many requests; retry in ${seconds} s` },
        { status: 429, headers: { ...securityHeaders, "retry-after": String(seconds) } }
      )
    }
    const body = yield* rawBody(limits.maxBodyBytes)
    if (Either.isLeft(body)) {
      yield* record(body.left.status === 413 ? "too_large" : "invalid", body.left.message, null)
      return json(body.left.status, {
        error: body.left.status === 413 ? "PayloadTooLarge" : "BadRequest",
        message: body.left.message
      })
    }
    const verdict = hooks.verify(
      hook,
      request.headers,
      Buffer.from(body.right),
      Math.floor(Date.now() / 1000)
    )
    if (verdict._tag === "Refused") {
      yield* record("refused", verdict.reason, null)
      return refusedAnswer()
    }
    const first = yield* hooks.firstSighting(verdict.hook, verdict.deliveryId).pipe(Effect.either)
    if (Either.isLeft(first)) {
      yield* Effect.logWarning(`hook ${verdict.hook.info.name}: ${first.left.message}`)
      return json(503, { error: "Unavailable", message: "the hook store is unavailable; retry" })
    }
    if (!first.right) {
      yield* record("replayed", "this delivery id was received before", verdict.deliveryId)
      return json(200, { accepted: false, duplicate: true })
    }
    const parsed = parse(verdict.hook, request.headers, body.right)
    if (Either.isLeft(parsed)) {
      yield* record("invalid", parsed.left, verdict.deliveryId)
      return json(400, { error: "BadRequest", message: parsed.left })
    }
    if (parsed.right.challenge !== undefined) {
      yield* record("accepted", "url_verification", verdict.deliveryId)
      return json(200, { challenge: parsed.right.challenge })
    }
    if (parsed.right.event === "ping" && verdict.hook.info.verify === "github") {
      yield* record("accepted", "ping", verdict.deliveryId)
      return json(200, { accepted: true, pong: true })
    }
    const taken = yield* act(
      verdict.hook.info.action,
      verdict.hook,
      verdict.deliveryId,
      parsed.right,
      body.right
    ).pipe(Effect.either)
    if (Either.isLeft(taken)) {
      const error = taken.left
      const refusedInput = [
        "NoText",
        "NoResponseUrl",
        "InvalidJobRequest",
        "InvalidSessionRequest",
        "SessionNotFound",
        "SessionNotRunning",
        "WorkspaceNotFound",
        "InvalidWorkspaceRequest",
        "InvalidBranchName"
      ].includes(error._tag)
      yield* record(
        refusedInput ? "invalid" : "failed",
        `${error._tag}: ${error.message}`.slice(0, 500),
        verdict.deliveryId
      )
      return json(refusedInput ? 422 : 503, { error: error._tag, message: error.message })
    }
    yield* record("accepted", null, verdict.deliveryId, taken.right)
    return json(taken.right.status, taken.right.body)
  })
