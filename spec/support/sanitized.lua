-- True when the host under test is built with a sanitizer (the sanitizer builds' CTest sets
-- LASYNC_SANITIZED; `make sanitize` also sets ASAN_OPTIONS). Their redzones and quarantine of freed
-- memory make RSS say nothing about lasync's own use, so RSS bounds are checked only without.
return os.getenv("LASYNC_SANITIZED") ~= nil or os.getenv("ASAN_OPTIONS") ~= nil
