// Own-results reads at a fixed rate (autocannon's overallRate), with each request using one of the
// users' tokens; prints the latency percentiles as JSON.
//   NODE_PATH=$(npm root -g) node benches/api/own-results-rate.js URL TOKENS_FILE RATE SECONDS
const fs = require('fs');
const autocannon = require('autocannon');

const [url, tokensFile, rate, seconds] = process.argv.slice(2);
const tokens = fs.readFileSync(tokensFile, 'utf8').trim().split('\n');
let next = 0;

autocannon({
  url,
  connections: 32,
  duration: Number(seconds),
  overallRate: Number(rate),
  requests: [{
    method: 'GET',
    path: '/v1/users/me/promotions',
    setupRequest: (request) => {
      request.headers = { authorization: 'Bearer ' + tokens[next++ % tokens.length] };
      return request;
    },
  }],
}, (error, result) => {
  if (error) throw error;
  const l = result.latency;
  console.log(JSON.stringify({
    requests_per_s: result.requests.average, p50_ms: l.p50, p90_ms: l.p90, p99_ms: l.p99,
    max_ms: l.max, non_2xx: result.non2xx, errors: result.errors,
  }));
});
