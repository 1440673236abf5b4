// The runbook's k6 load test (`k6 run perf/load_test.js`), for those who have k6. The project's own, tested
// load runs are `make perf` (vegeta or the built-in attacker), judged against policies.yaml; this script keeps
// the same SLOs as thresholds (tests/perf/test_k6_script.py checks they match the policy).
//
// Rates stay under the shipped per_ip limit (50/s from one address); every order uses a fresh user id so the
// 15 orders/hour limit is not what is measured.
import http from "k6/http";
import { check } from "k6";

const BASE = __ENV.BASE_URL || "http://localhost:8000";
const JSON_HEADERS = { "Content-Type": "application/json" };

export const options = {
  scenarios: {
    daily_horoscopes: {
      executor: "constant-arrival-rate", exec: "horoscopes", rate: 20, timeUnit: "1s",
      duration: "1m", preAllocatedVUs: 20,
    },
    orders: {
      executor: "constant-arrival-rate", exec: "orders", rate: 5, timeUnit: "1s",
      duration: "1m", preAllocatedVUs: 10,
    },
    payments: {
      executor: "constant-arrival-rate", exec: "payments", rate: 5, timeUnit: "1s",
      duration: "1m", preAllocatedVUs: 10,
    },
  },
  thresholds: {
    "http_req_duration{endpoint:daily_horoscopes}": ["p(95)<300"],
    "http_req_duration{endpoint:orders}": ["p(95)<500"],
    "http_req_duration{endpoint:payments}": ["p(95)<500"],
    "http_req_failed": ["rate<0.01"],
  },
};

function user() {
  return `k6-${__VU}-${__ITER}-${Date.now()}`;
}

export function horoscopes() {
  const res = http.get(`${BASE}/api/horoscopes/daily`, { tags: { endpoint: "daily_horoscopes" } });
  check(res, { "horoscopes 200": (r) => r.status === 200 });
}

function createOrder(id, endpoint) {
  return http.post(`${BASE}/api/orders`, JSON.stringify({ service: "tarot_reading", quantity: 1 }), {
    headers: { ...JSON_HEADERS, "X-User-Id": id },
    tags: { endpoint },
  });
}

export function orders() {
  const res = createOrder(user(), "orders");
  check(res, { "order 201": (r) => r.status === 201 });
}

export function payments() {
  const id = user();
  const order = createOrder(id, "payment_setup");
  if (order.status !== 201) {
    return;
  }
  const body = { order_id: order.json("id"), amount_cents: 2500, currency: "EUR" };
  const res = http.post(`${BASE}/api/payments/intent`, JSON.stringify(body), {
    headers: { ...JSON_HEADERS, "X-User-Id": id },
    tags: { endpoint: "payments" },
  });
  check(res, { "payment intent 201": (r) => r.status === 201 });
}
