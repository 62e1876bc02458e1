#!/usr/bin/env bash
# Breaks or mends the running demo's Correios simulator (scripts/demo.sh, 127.0.0.1:9080), to watch an alert travel
# from the fetcher to maildev.
#
#   scripts/demo-correios.sh break   # answers rename every event's dtHrCriado to dataHora, as if Correios changed
#                                    # its API; a new parcel is sent so that the fetcher calls Correios at once
#   scripts/demo-correios.sh fix     # answers in API Rastro's shape again; the parcel's next retry succeeds
#
# The fetcher cannot read the answer and turns Correios broken (carrier_state), Prometheus fires CarrierBroken after
# DEMO_ALERT_FOR (10 s), and Alertmanager emails it to maildev (http://127.0.0.1:1080) a few seconds later.
set -euo pipefail
SIM=http://127.0.0.1:9080
API=http://127.0.0.1:8080
TOKEN=demo-api-token-0123456789-abcdefghij

# A valid Correios S10 code (two letters, eight digits, the check digit, BR), new at each call.
s10() {
  local digits weights=(8 6 4 2 3 5 9 7) sum=0 i check
  digits=$(printf '%08d' $(( $(date +%s) % 100000000 )))
  for i in 0 1 2 3 4 5 6 7; do sum=$(( sum + ${digits:i:1} * weights[i] )); done
  case $(( sum % 11 )) in 0) check=5 ;; 1) check=0 ;; *) check=$(( 11 - sum % 11 )) ;; esac
  echo "DM${digits}${check}BR"
}

case "${1:-}" in
  break)
    curl -fsS -X PUT -H 'Content-Type: application/json' \
      -d '{"rename_event_field": ["dtHrCriado", "dataHora"]}' "$SIM/_sim/answers"
    code=$(s10)
    curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
      -d "{\"order_id\": \"BREAK-$code\", \"tracking_code\": \"$code\", \"customer\": {\"email\": \"ops@example.com\"}}" \
      "$API/v1/tracking-requests"
    echo "Correios now answers with dataHora instead of dtHrCriado; parcel $code sent to make the fetcher call it."
    echo "Watch: http://127.0.0.1:9101/health (the fetcher), Prometheus' alerts (the address the demo printed), then"
    echo "maildev (http://127.0.0.1:1080): the CarrierBroken email arrives within about 30 s."
    ;;
  fix)
    curl -fsS -X PUT -H 'Content-Type: application/json' -d '{"rename_event_field": null}' "$SIM/_sim/answers"
    echo "Correios answers in API Rastro's shape again: the held parcel's next retry succeeds and the alert resolves."
    ;;
  *)
    echo "usage: $0 break|fix" >&2
    exit 2
    ;;
esac
