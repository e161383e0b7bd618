-- wrk2/wrk script: GET /v1/users/me/promotions with the users' tokens from $TOKENS.
local tokens = {}

function init(args)
  for line in io.lines(os.getenv("TOKENS") or "tokens.txt") do
    tokens[#tokens + 1] = line
  end
  counter = math.random(#tokens)
end

function request()
  counter = counter % #tokens + 1
  return wrk.format("GET", "/v1/users/me/promotions", {
    ["Authorization"] = "Bearer " .. tokens[counter],
  })
end
