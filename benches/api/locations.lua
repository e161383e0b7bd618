-- wrk script: POST /v1/locations, one point per request, cycling through the access tokens in
-- $TOKENS (one per line, one per user), so each of N users reuses its own token.
local tokens = {}

function init(args)
  for line in io.lines(os.getenv("TOKENS") or "tokens.txt") do
    tokens[#tokens + 1] = line
  end
  counter = math.random(#tokens)
end

function request()
  counter = counter % #tokens + 1
  local lat = -6.2 + (counter % 100) * 0.001
  return wrk.format("POST", "/v1/locations", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[counter],
  }, string.format('{"lat":%.4f,"lon":106.82,"accuracy_m":5}', lat))
end
