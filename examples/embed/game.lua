-- The game's scripts: they run as tasks, a few milliseconds per frame, while the frame loop in
-- game.c goes on at 60 Hz.
local async = require "lasync"

local function log(fmt, ...) print(("  [frame %3d] " .. fmt):format(game.frame(), ...)) end

local cutscene = async.spawn(function()
  log("cutscene: fade in")
  game.wait_frames(30)             -- a C awaitable, resolved by the frame loop
  log("cutscene: dialogue")
  async.sleep(0.25)                -- plain time works too
  log("cutscene: done")
end)

local loader = async.spawn(function()
  local hero = game.load_asset("hero.png")   -- loaded on the thread pool
  log("loaded %s", hero)
  local ok, err = pcall(game.load_asset, "missing.png")
  log("loading missing.png failed as expected: %s", err)
end)

local fetcher
if BASE_URL ~= "" then
  fetcher = async.spawn(function()
    local t0 = async.now()
    local results = async.gather((function()
      local jobs = {}
      for i = 1, 20 do
        jobs[i] = function() return async.fetch(BASE_URL .. "/delay?s=0.3").status end
      end
      return jobs
    end)())
    log("20 fetches done in %.2f s while the frames went on (status %d)", async.now() - t0,
      results[1])
  end)
end

async.gather(cutscene, loader, fetcher or function() end)
log("all scripts finished")
