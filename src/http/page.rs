//! `/` and `/live`: a small page for a person (identity, uptime, packets per second per shard,
//! drops by reason, a chart of the last minutes, and the monitor's loops over the last day
//! from `/history`) and the JSON it polls.
//!
//! The page is one self-contained HTML document: inline style and script, no external
//! assets, and the first data embedded so that it draws without a second request. The
//! script refreshes from `/live` every two seconds.

use std::time::Duration;

use super::collect::{Collector, HISTORY_INTERVAL};
use crate::accounting::DropReason;
use crate::shard::stats::{self, ShardSnapshot};

/// What the page shows.
pub struct LiveInput<'a> {
    /// Identity key, base58.
    pub identity: &'a str,
    /// The node's name from its description.
    pub name: &'a str,
    /// The crate version.
    pub version: &'a str,
    /// Time since start.
    pub uptime: Duration,
    /// Each shard's published figures, now.
    pub shards: &'a [ShardSnapshot],
    /// History and telemetry.
    pub collector: &'a Collector,
}

fn rate(later: u64, earlier: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        0.0
    } else {
        later.saturating_sub(earlier) as f64 / seconds
    }
}

/// The `/live` body.
pub fn live(input: &LiveInput) -> serde_json::Value {
    let history: Vec<_> = input.collector.history.iter().collect();
    let shard_count = input.shards.len();
    let mut t_s = Vec::new();
    let mut received: Vec<Vec<f64>> = vec![Vec::new(); shard_count];
    let mut forwarded = Vec::new();
    let mut dropped = Vec::new();
    for pair in history.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let seconds = b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0;
        t_s.push(b.at_ms as f64 / 1000.0);
        for (shard, series) in received.iter_mut().enumerate() {
            let now = b.received.get(shard).copied().unwrap_or(0);
            let before = a.received.get(shard).copied().unwrap_or(0);
            series.push(rate(now, before, seconds));
        }
        forwarded.push(rate(
            b.forwarded.iter().sum(),
            a.forwarded.iter().sum(),
            seconds,
        ));
        dropped.push(rate(
            b.dropped.iter().sum(),
            a.dropped.iter().sum(),
            seconds,
        ));
    }
    let latest = |series: &Vec<f64>| series.last().copied().unwrap_or(0.0);
    let total = stats::total(input.shards);
    let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
        .iter()
        .map(|r| (r.label().to_string(), total.dropped[*r as usize].into()))
        .collect();
    serde_json::json!({
        "identity": input.identity,
        "name": input.name,
        "version": input.version,
        "uptime_s": input.uptime.as_secs(),
        "shards": (0..shard_count).map(|i| serde_json::json!({
            "shard": i,
            "received_per_s": latest(&received[i]),
            "received": input.shards[i].counts.packets.received,
            "forwarded": input.shards[i].counts.packets.forwarded,
            "held": input.shards[i].held,
            "queued": input.shards[i].queued,
            "next_hops": input.shards[i].next_hops,
        })).collect::<Vec<_>>(),
        "totals": {
            "received": total.received,
            "forwarded": total.forwarded,
            "dropped": total.dropped_total(),
            "forwarded_per_s": latest(&forwarded),
            "dropped_per_s": latest(&dropped),
        },
        "drops_by_reason": drops,
        "chart": {
            "interval_s": HISTORY_INTERVAL.as_secs_f64(),
            "t_s": t_s,
            "received_per_s_by_shard": received,
            "forwarded_per_s": forwarded,
            "dropped_per_s": dropped,
        },
    })
}

/// The `/` page, with `live` (the `/live` body) embedded as its first data.
pub fn page(live: &serde_json::Value) -> String {
    // Inside <script>, "</" must not appear: JSON lets it be written "<\/".
    let data = live.to_string().replace("</", "<\\/");
    PAGE.replace("__INITIAL_DATA__", &data)
}

const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nym-mixnode</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;background:#fafafa;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}
.sub{color:#5b6475;font-size:13px;word-break:break-all}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px;margin-top:16px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:14px}
.card h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eef0f4}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.big{font-size:26px;font-weight:600}
canvas{width:100%;height:260px;display:block}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
</style></head>
<body>
<h1 id="name">nym-mixnode</h1>
<div class="sub">identity <b id="identity"></b> · version <span id="version"></span> · up <span id="uptime"></span></div>
<div class="grid">
 <div class="card"><h2>Packets</h2>
  <div><span class="big" id="fwd_rate">0</span> forwarded/s · <span id="drop_rate">0</span> dropped/s</div>
  <table><tr><th>received</th><th>forwarded</th><th>dropped</th></tr>
  <tr><td class="n" id="t_recv"></td><td class="n" id="t_fwd"></td><td class="n" id="t_drop"></td></tr></table>
 </div>
 <div class="card"><h2>Per shard</h2><table id="shards"></table></div>
 <div class="card"><h2>Drops by reason</h2><table id="drops"></table></div>
</div>
<div class="card" style="margin-top:16px"><h2>Last minutes (packets/s)</h2>
 <canvas id="chart" width="1100" height="260"></canvas><div class="legend" id="legend"></div></div>
<div class="card" style="margin-top:16px"><h2>Loops through the node (last day, % back per hour)</h2>
 <canvas id="loops" width="1100" height="160"></canvas><div class="sub" id="loops_note"></div></div>
<script>
"use strict";
const COLORS=["#2f6fdf","#e0822b","#3aa55d","#a545c9","#d2405a","#1c9aa8","#8a6d3b","#666"];
function el(id){return document.getElementById(id)}
function fmt(n){return Number(n).toLocaleString("en-US",{maximumFractionDigits:1})}
function dur(s){const d=Math.floor(s/86400),h=Math.floor(s%86400/3600),m=Math.floor(s%3600/60);return (d?d+"d ":"")+(h?h+"h ":"")+m+"m "+(s%60)+"s"}
function row(cells,head){const tr=document.createElement("tr");cells.forEach((c,i)=>{const td=document.createElement(head?"th":"td");td.textContent=c;if(i>0)td.className="n";tr.appendChild(td)});return tr}
function draw(d){
 el("name").textContent=d.name?d.name+" · nym-mixnode":"nym-mixnode";
 el("identity").textContent=d.identity;el("version").textContent=d.version;el("uptime").textContent=dur(d.uptime_s);
 el("fwd_rate").textContent=fmt(d.totals.forwarded_per_s);el("drop_rate").textContent=fmt(d.totals.dropped_per_s);
 el("t_recv").textContent=fmt(d.totals.received);el("t_fwd").textContent=fmt(d.totals.forwarded);el("t_drop").textContent=fmt(d.totals.dropped);
 const st=el("shards");st.replaceChildren(row(["shard","received/s","received","held","queued","next hops"],true));
 d.shards.forEach(s=>st.appendChild(row([String(s.shard),fmt(s.received_per_s),fmt(s.received),fmt(s.held),fmt(s.queued),fmt(s.next_hops)])));
 const dt=el("drops");dt.replaceChildren(row(["reason","packets"],true));
 Object.entries(d.drops_by_reason).forEach(([k,v])=>dt.appendChild(row([k.replace(/_/g," "),fmt(v)])));
 chart(d.chart);
}
function chart(c){
 const cv=el("chart"),g=cv.getContext("2d"),W=cv.width,H=cv.height,L=56,B=24,T=10,R=10;
 g.fillStyle="#fff";g.fillRect(0,0,W,H);
 const series=c.received_per_s_by_shard.map((s,i)=>({name:"shard "+i+" received",v:s,c:COLORS[i%COLORS.length]}));
 series.push({name:"forwarded (all)",v:c.forwarded_per_s,c:"#111"});series.push({name:"dropped (all)",v:c.dropped_per_s,c:"#d2405a"});
 let max=1;series.forEach(s=>s.v.forEach(x=>{if(x>max)max=x}));max*=1.1;
 const n=Math.max(c.t_s.length,2),t0=c.t_s.length?c.t_s[0]:0,t1=c.t_s.length?c.t_s[c.t_s.length-1]:1,span=Math.max(t1-t0,1);
 g.strokeStyle="#e3e6ec";g.fillStyle="#5b6475";g.font="12px sans-serif";g.lineWidth=1;
 for(let i=0;i<=4;i++){const y=T+(H-T-B)*i/4;g.beginPath();g.moveTo(L,y);g.lineTo(W-R,y);g.stroke();g.fillText(fmt(max*(4-i)/4),4,y+4)}
 g.strokeStyle="#9aa3b2";g.beginPath();g.moveTo(L,T);g.lineTo(L,H-B);g.lineTo(W-R,H-B);g.stroke();
 g.fillText("-"+Math.round(span)+" s",L,H-6);g.fillText("now",W-R-24,H-6);
 series.forEach(s=>{g.strokeStyle=s.c;g.lineWidth=2;g.beginPath();s.v.forEach((x,i)=>{const px=L+(W-L-R)*((c.t_s[i]-t0)/span),py=H-B-(H-T-B)*x/max;i?g.lineTo(px,py):g.moveTo(px,py)});g.stroke()});
 if(c.t_s.length<2){g.fillStyle="#5b6475";g.fillText("collecting: one point a second",L+12,T+20)}
 const lg=el("legend");lg.replaceChildren();series.forEach(s=>{const sp=document.createElement("span"),i=document.createElement("i");i.style.background=s.c;sp.appendChild(i);sp.appendChild(document.createTextNode(s.name));lg.appendChild(sp)});
}
function loops(h){
 const cv=el("loops"),g=cv.getContext("2d"),W=cv.width,H=cv.height,L=56,B=24,T=10,R=10;
 g.fillStyle="#fff";g.fillRect(0,0,W,H);g.font="12px sans-serif";
 const pts=h.history||[],n=24,bw=(W-L-R)/n;
 g.strokeStyle="#e3e6ec";g.fillStyle="#5b6475";
 [0,50,100].forEach(p=>{const y=H-B-(H-T-B)*p/100;g.beginPath();g.moveTo(L,y);g.lineTo(W-R,y);g.stroke();g.fillText(p+"%",8,y+4)});
 pts.slice(-n).forEach((p,i)=>{const v=p.ipv4Uptime==null?p.ipv6Uptime:p.ipv4Uptime;if(v==null)return;
  const x=L+bw*(n-Math.min(pts.length,n)+i),hgt=(H-T-B)*v/100;g.fillStyle=v>=90?"#3aa55d":v>=50?"#e0822b":"#d2405a";g.fillRect(x+2,H-B-hgt,bw-4,hgt)});
 g.fillStyle="#5b6475";g.fillText("-24 h",L,H-6);g.fillText("now",W-R-24,H-6);
 el("loops_note").textContent=pts.length?"":"no loops yet (monitor.enabled = false, or the first interval has not passed)";
}
function loadLoops(){fetch("/history",{cache:"no-store"}).then(r=>r.ok?r.json():{history:[]}).then(loops).catch(()=>{})}
draw(__INITIAL_DATA__);loadLoops();setInterval(loadLoops,30000);
setInterval(()=>{fetch("/live",{cache:"no-store"}).then(r=>r.json()).then(draw).catch(()=>{})},2000);
</script>
</body></html>
"##;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Instant, SystemTime};

    #[test]
    fn live_rates_and_page_embedding() {
        let t0 = Instant::now();
        let mut c = Collector::new(Duration::from_secs(30), t0, SystemTime::UNIX_EPOCH);
        let mut s = ShardSnapshot::default();
        c.tick(t0, SystemTime::UNIX_EPOCH, &[s]);
        s.counts.packets.received = 500;
        s.counts.packets.forwarded = 400;
        s.counts.packets.dropped[DropReason::Replay as usize] = 20;
        c.tick(t0 + Duration::from_secs(2), SystemTime::UNIX_EPOCH, &[s]);
        let body = live(&LiveInput {
            identity: "Id</script>",
            name: "n",
            version: "0",
            uptime: Duration::from_secs(2),
            shards: &[s],
            collector: &c,
        });
        assert_eq!(body["shards"][0]["received_per_s"], 250.0);
        assert_eq!(body["totals"]["forwarded_per_s"], 200.0);
        assert_eq!(body["totals"]["dropped_per_s"], 10.0);
        assert_eq!(body["drops_by_reason"]["replay"], 20);
        let html = page(&body);
        assert!(!html.contains("__INITIAL_DATA__"));
        assert!(
            !html.contains("Id</script>"),
            "data cannot close the script"
        );
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external assets"
        );
    }
}
