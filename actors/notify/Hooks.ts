/**
 * Inbound hooks: a name (`POST /hooks/<name>`), how a request proves it comes from the hook's
 * sender (GitHub's `X-Hub-Signature-256`, Slack's `v0` signing secret, or Standard Webhooks
 * headers for anyone else), and the action a verified request takes. The hook's secret is the
 * credential of that route: a request that names no hook is refused exactly like one with a wrong
 * signature, after the same work, so the route tells nobody which names exist.
 */
import { Context, Effect, FiberSet, Layer, Option, Redacted, Schedule } from "effect"
import {
  type AddHook,
  AddedHook,
  type HookInfo,
  InvalidNotifyRequest,
  type NotifyError
} from "../../rpc/Notify.js"
import { Emitter } from "../../infra/eventlog/Emitter.js"
import * as Signatures from "../../infra/webhooks/Signatures.js"
import { RateLimiter } from "../proxy/Guards.js"
import { type Hook, NotifyStore } from "./NotifyStore.js"

/** A secret no hook has, checked against when the name is unknown (the same work, the same answer). */
const decoy = Signatures.newSecret()

/** What a request to a hook came to. */
export type Verification =
  | { readonly _tag: "Verified"; readonly hook: Hook; readonly deliveryId: string }
  | { readonly _tag: "Refused"; readonly reason: Signatures.Refusal | "unknown" }

/** The hooks. */
export class Hooks extends Context.Tag("vibes/Hooks")<
  Hooks,
  {
    readonly add: (request: AddHook) => Effect.Effect<AddedHook, NotifyError>
    readonly list: Effect.Effect<ReadonlyArray<HookInfo>, NotifyError>
    readonly remove: (name: string) => Effect.Effect<void, NotifyError>
    /** The hook named `name`, if any (read for each request: a hook added on any node is seen at once). */
    readonly find: (name: string) => Effect.Effect<Option.Option<Hook>, NotifyError>
    /** Checks a request's signature against `hook` (none: the decoy), at `nowSeconds`. */
    readonly verify: (
      hook: Option.Option<Hook>,
      headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>,
      body: Buffer,
      nowSeconds: number
    ) => Verification
    /**
     * Takes a token from `address`'s bucket for hook `key` (`ratePerMinute`, bursts of a tenth of
     * it): 0 when the request may go, else the seconds until one is free.
     */
    readonly take: (key: string, ratePerMinute: number, address: string) => number
    /** Whether a rate-limited request from `address` to `key` is recorded: one a second, not one a request. */
    readonly recordLimited: (key: string, address: string) => boolean
    /** Runs `effect` in the background for as long as the node runs (a reply sent later). */
    readonly background: (effect: Effect.Effect<void>) => Effect.Effect<void>
    /** Records a verified request's delivery id: false when it was seen before (a replay). */
    readonly firstSighting: (hook: Hook, deliveryId: string) => Effect.Effect<boolean, NotifyError>
  }
>() {}

/**
 * How long a delivery id is remembered. Slack and Standard Webhooks requests older than five
 * minutes are refused by their timestamp; GitHub's carry none, so their ids are kept for a week.
 */
const rememberSeen = 7 * 24 * 60 * 60 * 1000

/** The hooks of the node's store; forgets old delivery ids every hour. */
export const layer = Layer.scoped(
  Hooks,
  Effect.gen(function* () {
    const store = yield* NotifyStore
    const emitter = yield* Emitter
    const replies = yield* FiberSet.make()
    const limiters = new Map<string, RateLimiter>()
    const lastLimited = new Map<string, number>()
    yield* Effect.forkScoped(
      Effect.suspend(() => store.pruneSeen(new Date(Date.now() - rememberSeen))).pipe(
        Effect.catchAll((error) => Effect.logWarning(error.message)),
        Effect.repeat(Schedule.spaced("1 hour"))
      )
    )
    return Hooks.of({
      add: (request) =>
        Effect.gen(function* () {
          if (request.verify === "slack" && request.secret === undefined) {
            return yield* Effect.fail(
              new InvalidNotifyRequest({
                message:
                  "a Slack hook needs the app's signing secret (--secret), from its Basic Information page"
              })
            )
          }
          const secret = Option.getOrElse(
            Option.map(Option.fromNullable(request.secret), Redacted.value),
            Signatures.newSecret
          )
          const hook = yield* store.addHook(request, secret)
          yield* emitter.emit(
            "hook.added",
            { hook: request.name, verify: request.verify, action: request.action._tag },
            { component: "hooks" }
          )
          return AddedHook.make({ hook: hook.info, secret: Redacted.make(secret) })
        }),
      list: Effect.map(store.hooks, (hooks) => hooks.map((hook) => hook.info)),
      remove: (name) =>
        Effect.zipRight(
          store.removeHook(name),
          emitter.emit("hook.removed", { hook: name }, { component: "hooks" })
        ),
      find: store.hook,
      verify: (hook, headers, body, nowSeconds) => {
        const secret = Option.match(hook, {
          onNone: () => decoy,
          onSome: (found) => Redacted.value(found.secret)
        })
        const kind = Option.match(hook, {
          onNone: () => "hmac" as const,
          onSome: (found) => found.info.verify
        })
        const verdict =
          kind === "github"
            ? Signatures.verifyGitHub(secret, headers, body)
            : kind === "slack"
              ? Signatures.verifySlack(secret, headers, body, nowSeconds)
              : Signatures.verifyStandard(secret, headers, body, nowSeconds)
        if (Option.isNone(hook)) return { _tag: "Refused", reason: "unknown" }
        return verdict._tag === "Verified"
          ? { _tag: "Verified", hook: hook.value, deliveryId: verdict.deliveryId }
          : { _tag: "Refused", reason: verdict.reason }
      },
      take: (key, ratePerMinute, address) => {
        const limiter =
          limiters.get(key) ?? new RateLimiter(ratePerMinute / 60, Math.max(1, Math.ceil(ratePerMinute / 10)))
        limiters.set(key, limiter)
        return limiter.take(address)
      },
      recordLimited: (key, address) => {
        const at = `${key}\0${address}`
        const now = Date.now()
        if (now - (lastLimited.get(at) ?? 0) < 1000) return false
        if (lastLimited.size > 10_000) lastLimited.clear()
        lastLimited.set(at, now)
        return true
      },
      background: (effect) => Effect.asVoid(FiberSet.run(replies, effect)),
      firstSighting: (hook, deliveryId) => store.firstSighting(hook.info.id, deliveryId)
    })
  })
)
