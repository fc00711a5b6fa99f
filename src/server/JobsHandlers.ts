/**
 * Handlers of the `Jobs` RPC group, on the jobs facade.
 */
import { Effect, Option } from "effect"
import { JobsRpcs } from "../../rpc/Jobs.js"
import { Jobs } from "../../actors/job/Jobs.js"

/** The handlers. */
export const layer = JobsRpcs.toLayer(
  Effect.gen(function* () {
    const jobs = yield* Jobs
    return {
      "Jobs.Submit": (spec) => jobs.submit(spec),
      "Jobs.Execute": (spec) => jobs.execute(spec),
      "Jobs.Cancel": (request) => jobs.cancel(request.jobId),
      "Jobs.Get": (request) => jobs.get(request.jobId),
      "Jobs.List": (request) => jobs.list(request.limit, Option.fromNullable(request.status)),
      "Jobs.Logs": (request) => jobs.logs(request.jobId, request.after, request.follow)
    }
  })
)
