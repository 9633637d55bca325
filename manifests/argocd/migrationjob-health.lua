-- ArgoCD health check for datamover.io/MigrationJob (argocd-cm key resource.customizations.health.datamover.io_MigrationJob).
-- It reads only status.phase, status.message and status.progress, which the datamover operator writes.
--   pending, running, aborting, no status yet  -> Progressing (the migration is under way or about to be)
--   succeeded                                  -> Healthy
--   failed                                     -> Degraded
--   aborted, cancelled                         -> Healthy, with a message saying it was stopped: an abort only
--     happens because someone set spec.abort (or deleted the job), so the resource reached the state its spec asks
--     for. Suspended would wrongly suggest it can be resumed (it cannot), and Degraded would page people for a
--     deliberate stop. The message says how far it got, so a partial migration stays visible.
--   suspended                                  -> Suspended (spec.suspend paused it; false resumes it)
--   anything else                              -> Unknown (e.g. a phase added by a newer operator)
local hs = {}
local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the datamover operator to pick up the MigrationJob"
  return hs
end

local phase = status.phase
local detail = ""
if status.progress ~= nil and status.progress.objects ~= nil then
  detail = " (objects " .. status.progress.objects
  if status.progress.bytes ~= nil then
    detail = detail .. ", bytes " .. status.progress.bytes
  end
  detail = detail .. ")"
end
local text = phase
if status.message ~= nil and status.message ~= "" then
  text = phase .. ": " .. status.message
end

if phase == "succeeded" then
  hs.status = "Healthy"
elseif phase == "pending" or phase == "running" or phase == "aborting" then
  hs.status = "Progressing"
elseif phase == "suspended" then
  hs.status = "Suspended"
elseif phase == "failed" then
  hs.status = "Degraded"
elseif phase == "aborted" then
  hs.status = "Healthy"
  text = text .. " (stopped on request: the migration is incomplete)"
elseif phase == "cancelled" then
  hs.status = "Healthy"
  text = text .. " (stopped on request: nothing was migrated)"
else
  hs.status = "Unknown"
  text = "unknown phase " .. phase
end
hs.message = text .. detail
return hs
