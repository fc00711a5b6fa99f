/**
 * Handlers of the `Notify` RPC group: webhook endpoints and their delivery log on the notifier,
 * inbound hooks on the hooks service.
 */
import { Effect } from "effect"
import { NotifyRpcs } from "../../rpc/Notify.js"
import { Notifier } from "../../actors/notify/Notifier.js"
import { Hooks } from "../../actors/notify/Hooks.js"

/** The handlers. */
export const layer = NotifyRpcs.toLayer(
  Effect.gen(function* () {
    const notifier = yield* Notifier
    const hooks = yield* Hooks
    return {
      "Notify.AddEndpoint": (request) => notifier.addEndpoint(request),
      "Notify.ListEndpoints": () => notifier.listEndpoints,
      "Notify.RemoveEndpoint": (request) => notifier.removeEndpoint(request.name),
      "Notify.TestEndpoint": (request) => notifier.testEndpoint(request.name),
      "Notify.Deliveries": (request) => notifier.deliveries(request),
      "Notify.Redeliver": (request) => notifier.redeliver(request.id),
      "Notify.AddHook": (request) => hooks.add(request),
      "Notify.ListHooks": () => hooks.list,
      "Notify.RemoveHook": (request) => hooks.remove(request.name)
    }
  })
)
