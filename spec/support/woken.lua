-- For the specs of a task woken, then cancelled before it ran: what it waited on completed and
-- queued it, and a cancellation lands in the same loop turn, before it resumes (bindings/core/
-- task.c's on_resume then calls the awaitable's abandon, not its finish, and raises Cancelled).
--
--   local cancel_when_woken = require "woken"
--   assert.is_true(cancel_when_woken(task, function() --[[ complete what task waits on ]] end))
local async = require "lasync"

-- Whether t is queued to run: woken, and not yet resumed.
local function ready(t)
  for _, info in ipairs(async.tasks()) do
    if info.task == t then return info.waiting_on == "ready" end
  end
  return false
end

--- Waits until t is suspended, calls trigger(), then polls each turn until t is woken and
--- cancels it at once: the caller runs while t is queued, so t cannot have run in between.
--- Returns false if t finished instead, or nothing woke it within 5 s.
return function(t, trigger)
  local deadline = async.now() + 5
  while ready(t) do async.sleep(0) end -- a task just spawned is queued to start
  if trigger then trigger() end
  while not ready(t) do
    if t:done() or async.now() > deadline then return false end
    async.sleep(0)
  end
  t:cancel()
  return true
end
