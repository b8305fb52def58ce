// Arriving from a link on another site (a Prefect artifact, an alert e-mail), the browser withholds the
// SameSite=Strict session cookie, so the dashboard sent us here although we may be logged in. A request
// from this page is same-site: if the session answers, go on to where the link pointed.
(async () => {
  const next = document.querySelector("input[name=next]").value || "/";
  if (document.querySelector("p.error")) return;
  try {
    const answer = await fetch("/api/v1/dashboards", { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (answer.ok) location.replace(next);
  } catch (error) {
    // not logged in or offline: the form stays
  }
})();
