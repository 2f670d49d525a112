"""Word lists the fleet sample data is composed from.

Text built from real words in varied combinations compresses like production text
(a few times), unlike md5 hex (barely) or repeated filler (dozens of times), so
backup sizes, dump times and compression settings measured on the sandbox mean
something. Lists are plain ASCII without quotes; sizes are chosen for variety.
"""

from __future__ import annotations

# (make, model, fuel, VIN world manufacturer identifier)
VEHICLE_MODELS: list[tuple[str, str, str, str]] = [
    ("Ford", "Transit 350 L3H2", "diesel", "WF0"),
    ("Ford", "Transit Custom 320", "diesel", "WF0"),
    ("Ford", "E-Transit 390", "electric", "WF0"),
    ("Ford", "F-550 Super Duty", "diesel", "1FD"),
    ("Mercedes-Benz", "Sprinter 316 CDI", "diesel", "WDB"),
    ("Mercedes-Benz", "eSprinter", "electric", "W1V"),
    ("Mercedes-Benz", "Actros 2545", "diesel", "WDB"),
    ("Mercedes-Benz", "Atego 1224", "diesel", "WDB"),
    ("Volvo", "FH 460 Globetrotter", "diesel", "YV2"),
    ("Volvo", "FL Electric", "electric", "YV2"),
    ("Volvo", "FM 420", "diesel", "YV2"),
    ("Scania", "R 450 Highline", "diesel", "YS2"),
    ("Scania", "P 280 CNG", "cng", "YS2"),
    ("Scania", "G 410", "diesel", "YS2"),
    ("MAN", "TGX 18.510", "diesel", "WMA"),
    ("MAN", "TGL 12.220", "diesel", "WMA"),
    ("MAN", "eTGE 3.140", "electric", "WMA"),
    ("DAF", "XF 480 FT", "diesel", "XLR"),
    ("DAF", "LF 230 FA", "diesel", "XLR"),
    ("DAF", "CF Electric", "electric", "XLR"),
    ("Iveco", "Daily 35S16", "diesel", "ZCF"),
    ("Iveco", "S-Way 490", "lng", "ZCF"),
    ("Iveco", "Eurocargo 120E25", "diesel", "ZCF"),
    ("Renault Trucks", "T 480", "diesel", "VF6"),
    ("Renault", "Master dCi 135", "diesel", "VF1"),
    ("Renault", "Master E-Tech", "electric", "VF1"),
    ("Volkswagen", "Crafter 35 TDI", "diesel", "WV1"),
    ("Volkswagen", "Transporter T6.1", "diesel", "WV1"),
    ("Volkswagen", "ID. Buzz Cargo", "electric", "WV1"),
    ("Isuzu", "N75.190 Grafter", "diesel", "JAA"),
    ("Isuzu", "D-Max Utility", "diesel", "MPA"),
    ("Toyota", "Hilux Active", "diesel", "AHT"),
    ("Toyota", "Proace City", "diesel", "VR3"),
    ("Freightliner", "Cascadia 126", "diesel", "3AK"),
    ("Freightliner", "M2 106", "diesel", "1FV"),
    ("Kenworth", "T680", "diesel", "1XK"),
    ("Peterbilt", "579", "diesel", "1XP"),
    ("International", "LT625", "diesel", "3HS"),
    ("Mack", "Anthem 64T", "diesel", "1M1"),
    ("Hino", "338", "diesel", "5PV"),
    ("Ram", "ProMaster 2500", "petrol", "3C6"),
    ("Chevrolet", "Express 3500", "petrol", "1GC"),
    ("Nissan", "Townstar EV", "electric", "VNV"),
    ("Peugeot", "Boxer 335 BlueHDi", "diesel", "VF3"),
    ("Citroen", "e-Dispatch", "electric", "VF7"),
    ("Fiat", "Ducato Maxi", "diesel", "ZFA"),
    ("Vauxhall", "Vivaro L2", "diesel", "W0V"),
    ("Tesla", "Semi", "electric", "7G2"),
]

CITIES = [
    "Leeds", "Manchester", "Birmingham", "Bristol", "Glasgow", "Edinburgh", "Cardiff", "Belfast",
    "Sheffield", "Nottingham", "Leicester", "Coventry", "Liverpool", "Newcastle", "Sunderland",
    "Southampton", "Portsmouth", "Plymouth", "Exeter", "Norwich", "Ipswich", "Cambridge", "Oxford",
    "Reading", "Swindon", "Milton Keynes", "Northampton", "Peterborough", "Derby", "Stoke-on-Trent",
    "Wolverhampton", "Preston", "Blackburn", "Bolton", "Wigan", "Warrington", "Chester", "Hull",
    "York", "Bradford", "Huddersfield", "Doncaster", "Lincoln", "Aberdeen", "Dundee", "Inverness",
    "Swansea", "Newport", "Wrexham", "Carlisle", "Lancaster", "Middlesbrough", "Darlington",
    "Gloucester", "Worcester", "Hereford", "Bath", "Salisbury", "Bournemouth", "Brighton",
    "Crawley", "Maidstone", "Canterbury", "Dover", "Chelmsford", "Colchester", "Luton", "Watford",
    "Slough", "Basingstoke", "Guildford", "Woking", "Telford", "Shrewsbury", "Stafford",
    "Rotterdam", "Antwerp", "Lille", "Calais", "Dublin",
]

REGIONS = ["North East", "North West", "Yorkshire", "Midlands", "East", "South East", "South West", "London",
           "Scotland", "Wales", "Northern Ireland", "Benelux", "France North", "Ireland"]

DEPOT_SUFFIXES = ["North", "South", "East", "West", "Central", "Port", "Airport", "Ring Road",
                  "Industrial Estate", "Business Park", "Rail Freight Terminal", "Distribution Centre"]

STREETS = [
    "Mill", "Station", "Church", "Victoria", "Albert", "Park", "High", "Kings", "Queens", "Bridge",
    "Canal", "Wharf", "Market", "Chapel", "School", "Manor", "Grange", "Orchard", "Meadow", "Forge",
    "Foundry", "Tannery", "Brewery", "Harbour", "Dock", "Quay", "Ferry", "Castle", "Abbey", "Priory",
    "Windmill", "Cross", "Green", "Common", "Heath", "Moor", "Fen", "Marsh", "Riverside", "Lakeside",
    "Hillside", "Woodland", "Oak", "Ash", "Elm", "Beech", "Willow", "Cedar", "Larch", "Hawthorn",
    "Ashby", "Milton", "Carlton", "Stanley", "Clarence", "Wellington", "Nelson", "Trafalgar",
    "Waterloo", "Brunswick", "Cavendish", "Grosvenor", "Hanover", "Lancaster", "Newport", "Eastgate",
    "Westgate", "Northgate", "Southgate", "Beacon", "Falcon", "Kestrel", "Heron", "Swan", "Lark",
    "Phoenix", "Pioneer", "Enterprise", "Commerce", "Industry", "Progress", "Unity", "Compass",
]

STREET_TYPES = ["Road", "Street", "Lane", "Way", "Avenue", "Drive", "Close", "Place", "Park", "Estate",
                "Trading Estate", "Business Park", "Court", "Row", "Yard", "Terrace"]

COMPANIES = [
    "Northgate", "Apex", "Summit", "Meridian", "Harbour", "Crown", "Sterling", "Pennine", "Riverside",
    "Atlas", "Beacon", "Vanguard", "Horizon", "Kingfisher", "Red Kite", "Oakwood", "Greenfield",
    "Bluebell", "Thistle", "Castle", "Pinnacle", "Evergreen", "Silverline", "Trident", "Orbit",
    "Keystone", "Lighthouse", "Millstone", "Granite", "Cobalt", "Saffron", "Juniper", "Fenland",
    "Westmoor", "Eastfield", "Heritage", "Premier", "Regent", "Sovereign", "Paragon",
]

COMPANY_KINDS = ["Logistics", "Foods", "Building Supplies", "Pharmacy", "Hardware", "Dairy", "Bakery",
                 "Timber", "Plumbing Supplies", "Electrical Wholesale", "Garden Centre", "Print",
                 "Packaging", "Motor Factors", "Cash and Carry", "Brewery", "Farm Shop", "Hospital",
                 "Retail Park", "Cold Store", "Recycling", "Furniture", "Textiles", "Engineering"]

PURPOSES = ["delivery", "collection", "depot transfer", "multi-drop delivery", "return to depot",
            "customer visit", "trunking", "backhaul", "service run", "inspection", "driver training",
            "recovery", "urgent delivery", "scheduled route"]

FIRST_NAMES = [
    "James", "Oliver", "Harry", "Jack", "George", "Noah", "Charlie", "Jacob", "Alfie", "Freddie",
    "Thomas", "William", "Daniel", "Samuel", "Joseph", "Mohammed", "Liam", "Ethan", "Lucas", "Adam",
    "Amelia", "Olivia", "Isla", "Emily", "Ava", "Jessica", "Lily", "Sophie", "Grace", "Mia",
    "Chloe", "Ella", "Ruby", "Evie", "Hannah", "Freya", "Zara", "Aisha", "Priya", "Fatima",
    "Piotr", "Tomasz", "Marek", "Andrzej", "Krzysztof", "Agnieszka", "Katarzyna", "Ionut", "Andrei",
    "Mihai", "Elena", "Sean", "Ciaran", "Niamh", "Siobhan", "Rhys", "Gareth", "Dafydd", "Bethan",
    "Callum", "Fraser", "Ewan", "Morag", "Kirsty", "Raj", "Sanjay", "Arjun", "Deepa", "Anil", "Kwame",
    "Chidi", "Ngozi", "Tunde", "Yusuf", "Omar", "Hassan", "Leila", "Marco", "Luca", "Giulia",
]

LAST_NAMES = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson",
    "Wright", "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson",
    "Clarke", "Patel", "Khan", "Lewis", "James", "Phillips", "Mason", "Mitchell", "Rose", "Davis",
    "Rodriguez", "Cox", "Alexander", "Morgan", "Moore", "Martin", "Price", "Hughes", "Edwards",
    "Turner", "Hill", "Cooper", "Ward", "Morris", "King", "Harrison", "Baker", "Lee", "Allen",
    "Kowalski", "Nowak", "Wisniewski", "Popescu", "Ionescu", "Murphy", "Kelly", "O Brien", "Byrne",
    "MacDonald", "Campbell", "Stewart", "Fraser", "Reid", "Singh", "Sharma", "Gupta", "Ahmed",
    "Hussain", "Begum", "Okafor", "Mensah", "Adeyemi", "Rossi", "Russo", "Ferrari", "Silva",
    "Santos", "Costa", "Novak", "Horvat",
]

LICENSE_CLASSES = ["B", "C1", "C1E", "C", "CE", "D1"]

# Trip notes: "<subject> <condition>; <action>" plus numbers.
NOTE_SUBJECTS = [
    "customer", "loading bay", "gate", "site contact", "goods in", "forklift", "tail lift",
    "pallet", "roll cage", "delivery note", "access road", "car park", "weighbridge", "security",
    "reception", "dock door", "barrier", "traffic", "diversion", "motorway", "roundabout", "A road",
    "bridge", "level crossing", "fuel card", "charger", "trailer", "load", "seal", "temperature probe",
    "reefer unit", "satnav", "tachograph", "handheld", "POD signature", "ramp", "loading ramp",
]

NOTE_CONDITIONS = [
    "closed on arrival", "not answering", "blocked by contractor vans", "under repair",
    "busy, queued behind two artics", "refused the last pallet", "asked for a morning slot",
    "had the wrong paperwork", "was wet and slippery", "too narrow for the rigid", "moved to rear entrance",
    "short by two cases", "damaged in transit", "reading high", "reading low", "out of order",
    "needed a manager to sign", "only accepts before noon", "closed for stocktake", "flooded",
    "congested after an accident", "diverted via the ring road", "ok", "fine today", "slow",
    "gridlocked near the junction", "reset twice", "missing", "working again", "lost signal",
]

NOTE_ACTIONS = [
    "waited", "rang the office", "left a card", "rebooked for tomorrow", "took photos", "informed planner",
    "logged with dispatch", "used the side gate", "reversed in with a banksman", "topped up AdBlue",
    "checked tyres", "re-strapped the load", "swapped trailer", "returned goods to depot",
    "customer signed under protest", "called the site manager", "reported to transport office",
    "delivered to neighbour unit", "left with security", "took the long way round",
]

# Work orders: "<component> <symptom>" plus a diagnostic trouble code.
COMPONENTS = [
    "front brake pads", "rear brake discs", "brake caliper", "ABS sensor", "air dryer", "compressor",
    "clutch", "gearbox", "prop shaft", "rear axle", "wheel bearing", "nearside front tyre",
    "offside rear tyre", "steering rack", "track rod end", "leaf spring", "air suspension bag",
    "shock absorber", "alternator", "starter motor", "battery", "wiring loom", "tail light cluster",
    "headlamp", "indicator", "wiper motor", "windscreen", "mirror arm", "door seal", "cab tilt pump",
    "tail lift", "reefer unit", "DPF", "EGR valve", "turbocharger", "injector", "fuel pump",
    "AdBlue pump", "NOx sensor", "coolant pump", "radiator", "thermostat", "fan belt", "oil cooler",
    "sump gasket", "cylinder head gasket", "traction battery", "charging port", "onboard charger",
    "DC-DC converter", "inverter", "heat pump", "tachograph", "telematics unit", "reversing camera",
    "fifth wheel", "kingpin", "trailer coupling", "spare wheel carrier", "seat belt pretensioner",
]

SYMPTOMS = [
    "worn below limit", "noisy under load", "leaking", "intermittent fault", "overheating",
    "vibration at speed", "pulling to nearside", "warning light on", "not charging", "seized",
    "cracked", "loose", "corroded", "misaligned", "failed MOT check", "failed walkaround check",
    "reported by driver", "fault code stored", "low pressure", "high pressure", "no power",
    "slow to respond", "grinding noise", "squealing", "smoke on start", "loss of power",
    "regeneration failed", "limp mode", "sensor out of range", "damaged in yard",
]

DTC_LETTERS = ["P", "C", "B", "U"]

PART_VENDORS = ["Bosch", "Knorr-Bremse", "WABCO", "ZF", "Continental", "Michelin", "Bridgestone",
                "Valeo", "Hella", "Mahle", "Delphi", "Denso", "SKF", "Febi", "Sachs", "Brembo",
                "Haldex", "Eberspacher", "Thermo King", "Carrier", "OEM"]

REPAIR_ACTIONS = ["replaced", "refitted", "adjusted", "cleaned and tested", "re-torqued", "resealed",
                  "re-flashed", "recalibrated", "bled and tested", "repaired", "swapped under warranty",
                  "inspected, no fault found with", "temporarily repaired", "ordered new"]

REPAIR_OUTCOMES = ["road tested ok", "fault cleared", "codes cleared, monitor", "awaiting parts",
                   "customer informed", "MOT booked", "recheck at next service", "passed brake test",
                   "vehicle returned to service", "VOR until parts arrive", "warranty claim raised",
                   "signed off by workshop manager", "retorque after 50 km", "further diagnosis needed"]

VEHICLE_NOTES = ["ex-rental", "fitted with tail lift", "fridge body", "curtainsider", "box body",
                 "tipper", "dropside", "crew cab", "speed limited to 56 mph", "spare key in safe",
                 "dashcam fitted", "ULEZ compliant", "ADR kit on board", "livery due for refresh",
                 "on lease until", "insurance write-off repaired", "telematics upgraded",
                 "allocated to night shift", "pool vehicle", "trainer vehicle"]
